// Overview: recovered revenue per currency over time (in the merchant's time zone), the
// recovery figures, breakdowns by decline category, processor and card funding, and the
// model's uplift over its control group.

import { gql } from "../api.js";
import { barList, columnChart } from "../chart.js";
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
  const sections = stats.currencies.map((c) =>
    currencySection({ ...byCurrency.get(c.currency), ...c }, stats, range)
  );
  body.replaceChildren(
    intro,
    ...(sections.length ? sections : [h("p", { class: "empty" }, "No failed payments in this period.")])
  );
}

function currencySection(c, stats, range) {
  const s = c.summary;
  const money = (minor) => formatMoney(minor, c.currency);
  const points = c.series.map((p) => ({
    label: formatDate(p.start, stats.timezone),
    value: p.figures.recoveredAmount,
    text: `${money(p.figures.recoveredAmount)} (${formatCount(p.figures.recoveredCount)} payments)`,
  }));
  return h(
    "section",
    { class: "currency", "aria-labelledby": `currency-${c.currency}`, dataset: { currency: c.currency } },
    h("h2", { id: `currency-${c.currency}` }, `${c.currency}`),
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
    h("h3", {}, `Recovered revenue per ${range.granularity === "WEEK" ? "week" : "day"} (${stats.timezone})`),
    h(
      "div",
      { class: "card" },
      columnChart({
        title: `Recovered ${c.currency} per ${range.granularity === "WEEK" ? "week" : "day"}`,
        points,
        axis: (value) => money(Math.round(value)),
      })
    ),
    h(
      "div",
      { class: "grid" },
      breakdown("By decline category", (c.byDeclineCategory || []).map((r) => [label(r.category), r.figures]), money),
      breakdown("By processor", (c.byProcessor || []).map((r) => [label(r.processor), r.figures]), money),
      breakdown("By card funding", (c.byCardFunding || []).map((r) => [label(r.funding), r.figures]), money),
      breakdown("Recovered by", s.recoveredByActor.map((a) => [label(a.actor), { recoveryRateByCount: s.recoveredCount ? a.count / s.recoveredCount : null, recoveredAmount: a.amount, recoveredCount: a.count, failedCount: s.recoveredCount }]), money, "share of recoveries")
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

function breakdown(title, rows, money, rateName = "recovery rate") {
  return h(
    "section",
    { class: "card", "aria-label": title },
    h("h3", {}, title),
    rows.length
      ? barList({
          title: `${title}: ${rateName}`,
          rows: rows.map(([name, f]) => ({
            label: name,
            value: f.recoveryRateByCount,
            text: `${formatPercent(f.recoveryRateByCount)} · ${money(f.recoveredAmount)}`,
          })),
        })
      : h("p", { class: "empty" }, "No payments."),
    rows.length
      ? h(
          "details",
          {},
          h("summary", {}, "Show as a table"),
          h(
            "table",
            {},
            h("caption", {}, title),
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                h("th", { scope: "col" }, ""),
                h("th", { scope: "col", class: "num" }, "Failed"),
                h("th", { scope: "col", class: "num" }, "Recovered"),
                h("th", { scope: "col", class: "num" }, "Amount"),
                h("th", { scope: "col", class: "num" }, rateName)
              )
            ),
            h(
              "tbody",
              {},
              rows.map(([name, f]) =>
                h(
                  "tr",
                  {},
                  h("th", { scope: "row" }, name),
                  h("td", { class: "num" }, formatCount(f.failedCount)),
                  h("td", { class: "num" }, formatCount(f.recoveredCount)),
                  h("td", { class: "num" }, money(f.recoveredAmount)),
                  h("td", { class: "num" }, formatPercent(f.recoveryRateByCount))
                )
              )
            )
          )
        )
      : null
  );
}
