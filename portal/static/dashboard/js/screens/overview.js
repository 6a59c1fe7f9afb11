// Overview: recovered revenue per currency over time (in the merchant's time zone), the
// recovery figures, breakdowns by decline category, processor and card funding, and the
// model's uplift over its control group.

import { gql } from "../api.js";
import { columnChart } from "../chart.js";
import {
  errorBox,
  figure,
  formatCount,
  formatDate,
  formatDuration,
  formatMoney,
  formatNumber,
  formatPercent,
  h,
  label,
  loading,
  table,
} from "../dom.js";

const FIGURES = `
  failedCount failedAmount recoveredCount recoveredAmount inRecoveryCount inRecoveryAmount
  eligibleCount recoveryRateByCount recoveryRateByAmount eligibleRecoveryRateByCount
  attemptsPerRecovery medianTimeToRecoverSeconds
  recoveredByActor { actor count amount }
`;

const RANGE_ARGS = "$id: ID!, $from: DateTime!, $to: DateTime!, $granularity: Granularity!";
const STATS_ARGS = "from: $from, to: $to, granularity: $granularity";

// Two requests, each within the API's cost limit: the figures over time, and the breakdowns.
export const OVERVIEW_QUERY = `
  query Overview(${RANGE_ARGS}) {
    merchant(id: $id) {
      id
      name
      status
      retryPolicy { strategy controlGroupPercent timezone }
      recoveryStats(${STATS_ARGS}) {
        timezone
        from
        to
        currencies {
          currency
          summary { ${FIGURES} }
          series { start figures { recoveredAmount recoveredCount } }
          uplift {
            difference lower upper confidenceLevel
            treatment { eligibleCount recoveredCount recoveryRate }
            control { eligibleCount recoveredCount recoveryRate }
          }
        }
      }
    }
  }
`;

const BREAKDOWN = "failedCount recoveredCount recoveredAmount recoveryRateByCount";

export const BREAKDOWN_QUERY = `
  query OverviewBreakdowns(${RANGE_ARGS}) {
    merchant(id: $id) {
      recoveryStats(${STATS_ARGS}) {
        currencies {
          currency
          byDeclineCategory { category figures { ${BREAKDOWN} } }
          byProcessor { processor figures { ${BREAKDOWN} } }
          byCardFunding { funding figures { ${BREAKDOWN} } }
        }
      }
    }
  }
`;

const RANGES = [
  { days: 7, granularity: "DAY", title: "Last 7 days" },
  { days: 30, granularity: "DAY", title: "Last 30 days" },
  { days: 90, granularity: "WEEK", title: "Last 90 days" },
];

export async function render(root, ctx) {
  const days = Number(ctx.query.get("days")) || 30;
  const range = RANGES.find((r) => r.days === days) || RANGES[1];
  const { serverTime } = await gql("{ serverTime }", {}, { signal: ctx.signal });
  const to = new Date(serverTime);
  const from = new Date(to.getTime() - range.days * 86400000);
  const heading = h("h1", {}, `Overview${ctx.merchant.name ? ` · ${ctx.merchant.name}` : ""}`);
  const picker = h(
    "div",
    { class: "field" },
    h("label", { for: "range" }, "Period"),
    h(
      "select",
      {
        id: "range",
        onchange: (event) =>
          ctx.navigate(ctx.merchantPath(ctx.merchant.id, "overview", { days: event.target.value })),
      },
      RANGES.map((r) => h("option", { value: r.days, selected: r === range }, r.title))
    )
  );
  const body = h("div", {}, loading());
  root.append(heading, h("form", { class: "inline", onsubmit: (e) => e.preventDefault() }, picker), body);

  const variables = {
    id: ctx.merchant.id,
    from: from.toISOString(),
    to: to.toISOString(),
    granularity: range.granularity,
  };
  let data;
  let breakdowns;
  try {
    [data, breakdowns] = await Promise.all([
      gql(OVERVIEW_QUERY, variables, { signal: ctx.signal }),
      gql(BREAKDOWN_QUERY, variables, { signal: ctx.signal }),
    ]);
  } catch (error) {
    if (error.name === "AbortError") return;
    body.replaceChildren(errorBox(error));
    return;
  }
  const merchant = data.merchant;
  if (!merchant) {
    body.replaceChildren(errorBox({ message: "This merchant does not exist or is not visible to this key.", code: "NOT_FOUND" }));
    return;
  }
  const stats = merchant.recoveryStats;
  const policy = merchant.retryPolicy;
  const intro = h(
    "p",
    { class: "help" },
    `${range.title} to ${formatDate(stats.to, stats.timezone)}, in ${stats.timezone}. `,
    policy
      ? `Retries: ${label(policy.strategy)}${policy.strategy === "MODEL" ? ` with ${policy.controlGroupPercent}% on the fixed schedule as a control group` : ""}. `
      : "No retry policy yet. ",
    merchant.status !== "ACTIVE" ? h("span", { class: "badge", dataset: { tone: "warn" } }, label(merchant.status)) : null
  );
  const byCurrency = new Map(
    (breakdowns.merchant ? breakdowns.merchant.recoveryStats.currencies : []).map((c) => [c.currency, c])
  );
  const currencies = stats.currencies.map((c) => ({ ...byCurrency.get(c.currency), ...c }));
  if (!currencies.length) {
    body.replaceChildren(intro, h("p", { class: "empty" }, "No failed payments in this period."));
    return;
  }
  // Amounts are never added across currencies: one row each, and one currency in detail
  // (the one with the most failed payments unless the address names another).
  const busiest = [...currencies].sort((a, b) => b.summary.failedCount - a.summary.failedCount)[0];
  const chosen = currencies.find((c) => c.currency === ctx.query.get("currency")) || busiest;
  const choose = h(
    "select",
    {
      id: "currency",
      onchange: (event) =>
        ctx.navigate(
          ctx.merchantPath(ctx.merchant.id, "overview", { days: range.days, currency: event.target.value })
        ),
    },
    currencies.map((c) => h("option", { value: c.currency, selected: c === chosen }, c.currency))
  );
  picker.after(h("div", { class: "field" }, h("label", { for: "currency" }, "Currency"), choose));
  body.replaceChildren(
    intro,
    currencyTable(currencies),
    currencySection(chosen, stats, range)
  );
}

function currencyTable(currencies) {
  return table({
    caption: "Recovery per currency",
    rows: currencies,
    rowAttributes: (c) => ({ dataset: { currency: c.currency } }),
    columns: [
      { title: "Currency", render: (c) => c.currency },
      { title: "Failed", numeric: true, render: (c) => formatCount(c.summary.failedCount) },
      { title: "Recovered", numeric: true, render: (c) => formatCount(c.summary.recoveredCount) },
      {
        title: "Recovered amount",
        numeric: true,
        render: (c) => formatMoney(c.summary.recoveredAmount, c.currency),
      },
      { title: "Recovery rate", numeric: true, render: (c) => formatPercent(c.summary.recoveryRateByCount) },
      {
        title: "In recovery",
        numeric: true,
        render: (c) => formatMoney(c.summary.inRecoveryAmount, c.currency),
      },
    ],
  });
}

function currencySection(c, stats, range) {
  const s = c.summary;
  const money = (minor) => formatMoney(minor, c.currency);
  const period = range.granularity === "WEEK" ? "week" : "day";
  const points = c.series.map((p) => ({
    label: formatDate(p.start, stats.timezone),
    value: p.figures.recoveredAmount,
    text: `${money(p.figures.recoveredAmount)} (${formatCount(p.figures.recoveredCount)} payments)`,
  }));
  const recoveredAny = points.some((p) => p.value > 0);
  return h(
    "section",
    { class: "currency", "aria-labelledby": "currency-heading", dataset: { currency: c.currency } },
    h("h2", { id: "currency-heading" }, `${c.currency} in detail`),
    h(
      "div",
      { class: "figures" },
      figure("Recovered", money(s.recoveredAmount), `${formatCount(s.recoveredCount)} of ${formatCount(s.failedCount)} failed payments`),
      figure("Recovery rate", formatPercent(s.recoveryRateByCount), `by amount ${formatPercent(s.recoveryRateByAmount)}`),
      figure("Eligible recovery rate", formatPercent(s.eligibleRecoveryRateByCount), `${formatCount(s.eligibleCount)} eligible`),
      figure("Attempts per recovery", formatNumber(s.attemptsPerRecovery, 2)),
      figure("In recovery", money(s.inRecoveryAmount), `${formatCount(s.inRecoveryCount)} payments`),
      figure("Median time to recover", formatDuration(s.medianTimeToRecoverSeconds)),
      upliftFigure(c.uplift)
    ),
    h("h3", {}, `Recovered revenue per ${period} (${stats.timezone})`),
    h(
      "div",
      { class: "card" },
      recoveredAny
        ? columnChart({
            title: `Recovered ${c.currency} per ${period}`,
            points,
            axis: (value) => money(Math.round(value)),
          })
        : h("p", { class: "empty" }, `Nothing recovered in ${c.currency} in this period yet.`)
    ),
    h(
      "div",
      { class: "grid breakdowns" },
      breakdown("By decline category", (c.byDeclineCategory || []).map((r) => [label(r.category), r.figures]), money),
      breakdown("By processor", (c.byProcessor || []).map((r) => [label(r.processor), r.figures]), money),
      breakdown("By card funding", (c.byCardFunding || []).map((r) => [label(r.funding), r.figures]), money),
      recoveredBy(s, money)
    )
  );
}

function upliftFigure(uplift) {
  if (!uplift) {
    return figure(
      "Model uplift",
      "—",
      "Shown once the model and its control group each have enough eligible payments."
    );
  }
  const points = (x) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)} pts`;
  return figure(
    "Model uplift",
    points(uplift.difference),
    `${Math.round(uplift.confidenceLevel * 100)}% interval ${points(uplift.lower)} to ${points(uplift.upper)}; ` +
      `model ${formatPercent(uplift.treatment.recoveryRate)} of ${formatCount(uplift.treatment.eligibleCount)}, ` +
      `control ${formatPercent(uplift.control.recoveryRate)} of ${formatCount(uplift.control.eligibleCount)}`
  );
}

// A bar inside a table cell: its width is set through the CSSOM (inline style attributes
// are refused by the page's content security policy).
function rateBar(rate) {
  const fill = h("span", { class: "rate-fill" });
  fill.style.width = `${Math.max(0, Math.min(1, rate || 0)) * 100}%`;
  return h("span", { class: "rate-bar", "aria-hidden": "true" }, fill);
}

// A table's caption names it; an empty one is a heading and a line instead.
function titled(title, rows, empty, render) {
  return rows.length ? render() : [h("h3", { class: "breakdown-title" }, title), h("p", { class: "empty" }, empty)];
}

function breakdown(title, rows, money) {
  return h(
    "section",
    { class: "card breakdown", "aria-label": title },
    titled(title, rows, "No payments.", () => table({
      caption: title,
      rows,
      empty: "No payments.",
      columns: [
        { title: "", render: ([name]) => name },
        { title: "Failed", numeric: true, render: ([, f]) => formatCount(f.failedCount) },
        { title: "Recovered", numeric: true, render: ([, f]) => money(f.recoveredAmount) },
        {
          title: "Rate",
          numeric: true,
          render: ([, f]) => h("span", { class: "rate" }, rateBar(f.recoveryRateByCount), formatPercent(f.recoveryRateByCount)),
        },
      ],
    }))
  );
}

function recoveredBy(summary, money) {
  const rows = summary.recoveredByActor.filter((a) => a.count > 0);
  return h(
    "section",
    { class: "card breakdown", "aria-label": "Recovered by" },
    titled("Recovered by", rows, "Nothing recovered yet.", () => table({
      caption: "Recovered by",
      rows,
      empty: "Nothing recovered yet.",
      columns: [
        { title: "", render: (a) => label(a.actor) },
        { title: "Payments", numeric: true, render: (a) => formatCount(a.count) },
        { title: "Amount", numeric: true, render: (a) => money(a.amount) },
        {
          title: "Share",
          numeric: true,
          render: (a) => {
            const share = summary.recoveredCount ? a.count / summary.recoveredCount : null;
            return h("span", { class: "rate" }, rateBar(share), formatPercent(share));
          },
        },
      ],
    }))
  );
}
