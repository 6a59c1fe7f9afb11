// Payments: the merchant's payments in recovery, filtered, searched, sorted and keyset-paged,
// with the total count, a CSV export of the same filter, and rows kept current by the
// `paymentEvents` subscription.
//
// Everything the list shows is read from the route's query (filters, order, page size and the
// cursors of the pages before this one), so a link shows the same list and Back goes back.
// Applying the form or paging navigates; the shell then renders the screen again.

import { ApiError, downloadExport, gql, subscribe } from "../api.js";
import { ACTORS, DECLINE_CATEGORIES, PROCESSORS, STATES } from "../enums.js";
import { announce, errorBox, formatCount, formatMoney, h, label, loading } from "../dom.js";

const ORDER_FIELDS = [
  ["FAILED_AT", "First failure"],
  ["NEXT_RETRY_AT", "Next retry"],
  ["AMOUNT", "Amount (one currency)"],
  ["RECOVERED_AT", "Recovery time"],
];
const PAGE_SIZES = [10, 25, 50, 100];
const DEFAULT_PAGE_SIZE = 25;
const LIST_FIELDS = ["states", "declineCategories", "processors", "currencies", "recoveredBy"];

const ROW = `
  fragment PaymentRow on Payment {
    id processor processorPaymentId state
    amount { amountMinor currency }
    failedAt nextRetryAt recoveredAt recoveredBy attemptCount
    customer { externalRef }
    card { brand last4 }
    decline { category }
  }
`;

export const PAYMENTS_QUERY = `
  query PaymentsPage($id: ID!, $first: Int!, $after: String, $filter: PaymentFilter, $orderBy: PaymentOrder) {
    serverTime
    merchant(id: $id) {
      id
      payments(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
        totalCount
        isEstimate
        pageInfo { endCursor hasNextPage }
        edges { node { ...PaymentRow } }
      }
    }
  }
  ${ROW}
`;

const EVENTS_SUBSCRIPTION = `
  subscription PaymentsLive($merchantId: ID!, $after: String) {
    paymentEvents(merchantId: $merchantId, after: $after) { cursor type payload }
  }
`;

// The merchant's time zone (its retry policy's): dates in the filter are its days, and times
// are shown in it. Kept for the session; it changes only with the policy.
const timezones = new Map();

async function merchantTimezone(merchantId, signal) {
  if (!timezones.has(merchantId)) {
    const data = await gql(
      "query MerchantTimezone($id: ID!) { merchant(id: $id) { retryPolicy { timezone } } }",
      { id: merchantId },
      { signal }
    );
    timezones.set(merchantId, data.merchant?.retryPolicy?.timezone || "UTC");
  }
  return timezones.get(merchantId);
}

// ---- the list's state, in the route's query ------------------------------------------------

// What the form shows: text as typed, lists as arrays (unknown names dropped).
export function readState(query) {
  const list = (name, allowed) =>
    (query.get(name) || "")
      .split(",")
      .map((v) => v.trim())
      .filter((v) => v && (!allowed || allowed.includes(v)));
  const orderBy = query.get("orderBy");
  const first = Number(query.get("first"));
  return {
    search: query.get("search") || "",
    states: list("states", STATES),
    declineCategories: list("declineCategories", DECLINE_CATEGORIES),
    processors: list("processors", PROCESSORS),
    recoveredBy: list("recoveredBy", ACTORS),
    currencies: list("currencies").map((c) => c.toUpperCase()),
    failedAfter: query.get("failedAfter") || "",
    failedBefore: query.get("failedBefore") || "",
    amountMin: query.get("amountMin") || "",
    amountMax: query.get("amountMax") || "",
    orderBy: ORDER_FIELDS.some(([f]) => f === orderBy) ? orderBy : "FAILED_AT",
    direction: query.get("direction") === "ASC" ? "ASC" : "DESC",
    first: PAGE_SIZES.includes(first) ? first : DEFAULT_PAGE_SIZE,
    // Cursors of the pages after the first up to this one: the last is this page's `after`.
    pages: (query.get("pages") || "").split(",").filter(Boolean),
  };
}

// The route query of a state (defaults left out, so plain links stay short).
function toQuery(state) {
  const query = {};
  for (const name of ["search", "failedAfter", "failedBefore", "amountMin", "amountMax"]) {
    if (state[name]) query[name] = state[name];
  }
  for (const name of LIST_FIELDS) {
    if (state[name].length) query[name] = state[name].join(",");
  }
  if (state.orderBy !== "FAILED_AT") query.orderBy = state.orderBy;
  if (state.direction !== "DESC") query.direction = state.direction;
  if (state.first !== DEFAULT_PAGE_SIZE) query.first = String(state.first);
  if (state.pages.length) query.pages = state.pages.join(",");
  return query;
}

// A problem with what was typed, found before asking the API; `field` is the API's name for it
// ("filter.amountMin") so it is shown where the API's own errors are.
class FormProblem extends Error {
  constructor(field, message) {
    super(message);
    this.code = "INVALID_ARGUMENT";
    this.field = field;
  }
}

// Digits after the decimal point of `currency` (2 for EUR, 0 for JPY, 3 for KWD).
function exponentOf(currency) {
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
      .maximumFractionDigits;
  } catch {
    return 2;
  }
}

// "12.50" EUR -> 1250 minor units. Without exactly one currency the amount is sent in
// hundredths: the API then refuses it with its own explanation (amounts need one currency).
function toMinor(text, currencies, field) {
  const exponent = currencies.length === 1 ? exponentOf(currencies[0]) : 2;
  const match = /^(\d+)(?:[.,](\d*))?$/.exec(text.trim());
  if (!match) throw new FormProblem(field, `Write an amount such as 12.50, not "${text}".`);
  const fraction = match[2] || "";
  if (fraction.length > exponent) {
    throw new FormProblem(
      field,
      `${currencies[0] || "This currency"} has ${exponent} decimal places.`
    );
  }
  return Number(match[1]) * 10 ** exponent + Number(fraction.padEnd(exponent, "0") || 0);
}

// How far `timeZone` is ahead of UTC at the instant `ms`, in milliseconds.
function zoneOffset(ms, timeZone) {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat("en-US", {
      timeZone,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    })
      .formatToParts(new Date(ms))
      .map((p) => [p.type, p.value])
  );
  const local = Date.UTC(
    parts.year,
    parts.month - 1,
    parts.day,
    parts.hour,
    parts.minute,
    parts.second
  );
  return local - Math.floor(ms / 1000) * 1000;
}

// The instant a day ("2026-11-01") starts in `timeZone`, as ISO 8601 UTC.
export function startOfDay(day, timeZone, field) {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(day);
  if (!match) throw new FormProblem(field, `Write a date as YYYY-MM-DD, not "${day}".`);
  const midnight = Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3]));
  // The offset at local midnight can differ from the one at UTC midnight (a DST change that
  // day): a second pass settles it.
  let instant = midnight - zoneOffset(midnight, timeZone);
  instant = midnight - zoneOffset(instant, timeZone);
  return new Date(instant).toISOString();
}

// The API's PaymentFilter for a state, or a FormProblem.
function toFilter(state, timeZone) {
  const filter = {};
  if (state.search.trim()) filter.search = state.search.trim();
  for (const name of LIST_FIELDS) if (state[name].length) filter[name] = state[name];
  if (state.failedAfter)
    filter.failedAfter = startOfDay(state.failedAfter, timeZone, "filter.failedAfter");
  if (state.failedBefore)
    filter.failedBefore = startOfDay(state.failedBefore, timeZone, "filter.failedBefore");
  if (state.amountMin)
    filter.amountMin = toMinor(state.amountMin, state.currencies, "filter.amountMin");
  if (state.amountMax)
    filter.amountMax = toMinor(state.amountMax, state.currencies, "filter.amountMax");
  return filter;
}

function activeFilterCount(state) {
  return (
    LIST_FIELDS.filter((name) => state[name].length).length +
    ["failedAfter", "failedBefore", "amountMin", "amountMax"].filter((n) => state[n]).length
  );
}

// ---- the screen --------------------------------------------------------------------------

export async function render(root, ctx) {
  const merchantId = ctx.merchant.id;
  const state = readState(ctx.query);
  announce(""); // what another screen said no longer applies here
  const go = (next, options) =>
    ctx.navigate(ctx.merchantPath(merchantId, "payments", toQuery(next)), options);

  const form = filterForm(state, (next) => go({ ...next, pages: [] }));
  const problems = h("div", { class: "form-problems", id: "payments-problems" });
  const summary = h("p", { class: "list-summary", role: "status" });
  const liveState = h("span", { class: "live", dataset: { state: "connecting" } }, "Connecting…");
  const exportBox = h("div", { class: "export-result" });
  const exportButton = h(
    "button",
    { type: "button", class: "secondary", id: "export-csv" },
    "Export CSV"
  );
  const listBox = h("div", { class: "payments-list" }, loading());
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const elsewhere = h("p", { class: "live-note", "aria-live": "polite" });

  root.append(
    h("h1", {}, `Payments${ctx.merchant.name ? ` · ${ctx.merchant.name}` : ""}`),
    form.element,
    problems,
    h("div", { class: "list-bar" }, summary, liveState, exportButton),
    exportBox,
    elsewhere,
    listBox,
    pager
  );

  let timeZone;
  let filter;
  try {
    timeZone = await merchantTimezone(merchantId, ctx.signal);
    form.setTimeZone(timeZone);
    filter = toFilter(state, timeZone);
  } catch (error) {
    if (error.name === "AbortError") return;
    failed(error);
    return;
  }

  exportButton.addEventListener("click", async () => {
    exportButton.disabled = true;
    exportBox.replaceChildren(h("span", { class: "help" }, "Preparing the CSV…"));
    try {
      const bytes = await downloadExport("csv", { merchantId, ...filter });
      exportBox.replaceChildren();
      announce(`Exported the payments matching these filters (${formatCount(bytes)} bytes).`, {
        tone: "success",
      });
    } catch (error) {
      exportBox.replaceChildren(errorBox(error));
    } finally {
      exportButton.disabled = false;
    }
  });

  const variables = {
    id: merchantId,
    first: state.first,
    after: state.pages.at(-1) || null,
    filter,
    orderBy: { field: state.orderBy, direction: state.direction },
  };
  let connection;
  let serverTime;
  try {
    const data = await gql(PAYMENTS_QUERY, variables, { signal: ctx.signal });
    if (!data.merchant) {
      throw new ApiError("This merchant does not exist or is not visible to this key.", {
        code: "NOT_FOUND",
      });
    }
    connection = data.merchant.payments;
    serverTime = data.serverTime;
  } catch (error) {
    if (error.name === "AbortError") return;
    failed(error);
    return;
  }

  const pageNumber = state.pages.length + 1;
  const count = connection.isEstimate
    ? `about ${formatCount(connection.totalCount)}`
    : formatCount(connection.totalCount);
  const noun = connection.totalCount === 1 && !connection.isEstimate ? "payment" : "payments";
  const match = activeFilterCount(state) || state.search ? " match" : "";
  summary.textContent = `${count} ${noun}${match} · page ${pageNumber}`;
  summary.dataset.total = String(connection.totalCount);

  const rows = connection.edges.map((edge) => edge.node);
  const table = paymentsTable(rows, ctx, timeZone, state, timeFormat(timeZone, serverTime));
  listBox.replaceChildren(table.element);

  pager.append(
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        disabled: pageNumber === 1,
        onclick: () => go({ ...state, pages: state.pages.slice(0, -1) }),
      },
      "← Previous"
    ),
    h("span", { class: "help" }, `Page ${pageNumber}`),
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        disabled: !connection.pageInfo.hasNextPage,
        onclick: () => go({ ...state, pages: [...state.pages, connection.pageInfo.endCursor] }),
      },
      "Next →"
    )
  );

  followEvents(ctx, merchantId, table, timeZone, liveState, elsewhere);

  // No list: the problem is shown at the form, and nothing that needs the list stays.
  function failed(error) {
    showProblem(error);
    listBox.replaceChildren();
    summary.textContent = "";
    liveState.remove();
    exportButton.remove(); // the export would be refused for the same reason
  }

  function showProblem(error) {
    // Asking again helps with an outage, not with a refused argument.
    const lasting = ["INVALID_ARGUMENT", "INVALID_CURSOR", "NOT_FOUND", "FORBIDDEN"].includes(
      error.code
    );
    problems.replaceChildren(
      errorBox(error, { retry: lasting ? null : () => go(state, { replace: true }) })
    );
    form.markField(error.field || error.extensions?.field, error.message);
    if (error.code === "INVALID_CURSOR" && state.pages.length) {
      problems.append(
        h(
          "button",
          { type: "button", class: "link", onclick: () => go({ ...state, pages: [] }) },
          "Go to the first page"
        )
      );
    }
  }
}

// Live rows: an event about a payment on this page refetches that payment and marks its row;
// events about others are counted, with a way to reload the list.
function followEvents(ctx, merchantId, table, timeZone, liveState, elsewhere) {
  const waiting = new Set();
  let timer = null;
  let others = 0;

  const statusText = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    refused: "Live updates refused",
    closed: "Not live",
  };

  async function refresh() {
    timer = null;
    const ids = [...waiting];
    waiting.clear();
    // One request for every changed row: node(id:) under an alias per payment.
    const args = ids.map((_, i) => `$p${i}: ID!`).join(", ");
    const fields = ids.map((_, i) => `p${i}: node(id: $p${i}) { ...PaymentRow }`).join("\n");
    const variables = Object.fromEntries(ids.map((id, i) => [`p${i}`, id]));
    try {
      const data = await gql(`query PaymentRows(${args}) { ${fields} } ${ROW}`, variables, {
        signal: ctx.signal,
      });
      for (const payment of Object.values(data)) if (payment) table.update(payment);
    } catch (error) {
      if (error.name !== "AbortError") elsewhere.replaceChildren(errorBox(error));
    }
  }

  const stop = subscribe(
    EVENTS_SUBSCRIPTION,
    { merchantId },
    {
      cursorOf: (data) => data.paymentEvents.cursor,
      onStatus: (status) => {
        liveState.dataset.state = status;
        liveState.textContent = statusText[status] || status;
      },
      onError: (error) => {
        elsewhere.replaceChildren(errorBox(error));
      },
      onData: (data) => {
        const payload = data.paymentEvents.payload || {};
        // The payload names the processor in lower case ("stripe"), the API's enum in capitals.
        const id = table.idOf(
          String(payload.processor).toUpperCase(),
          payload.processor_payment_id
        );
        if (id) {
          waiting.add(id);
          // Events come in bursts (a retry is several changes): one refetch for the burst.
          if (!timer) timer = window.setTimeout(refresh, 250);
        } else {
          others += 1;
          elsewhere.replaceChildren(
            `${formatCount(others)} ${others === 1 ? "change" : "changes"} to payments ` +
              "not on this page since it loaded. ",
            h(
              "button",
              {
                type: "button",
                class: "link",
                onclick: () => ctx.navigate(window.location.hash, { replace: true }),
              },
              "Reload the list"
            )
          );
        }
      },
    }
  );
  ctx.signal.addEventListener("abort", () => {
    if (timer) window.clearTimeout(timer);
    stop();
  });
}

// ---- the form ----------------------------------------------------------------------------

function checkboxGroup(name, legend, values, chosen) {
  return h(
    "fieldset",
    { class: "choices", id: `f-${name}` },
    h("legend", {}, legend),
    values.map((value) =>
      h(
        "label",
        { class: "choice" },
        h("input", { type: "checkbox", name, value, checked: chosen.includes(value) }),
        ` ${label(value)}`
      )
    )
  );
}

function textField(name, title, value, attributes = {}, help) {
  const helpId = help ? `f-${name}-help` : null;
  return h(
    "div",
    { class: "field", dataset: { field: name } },
    h("label", { for: `f-${name}` }, title),
    h("input", { id: `f-${name}`, name, value, "aria-describedby": helpId, ...attributes }),
    help ? h("span", { class: "help", id: helpId }, help) : null
  );
}

function selectField(name, title, options, chosen) {
  return h(
    "div",
    { class: "field", dataset: { field: name } },
    h("label", { for: `f-${name}` }, title),
    h(
      "select",
      { id: `f-${name}`, name },
      options.map(([value, text]) =>
        h("option", { value, selected: String(value) === String(chosen) }, text)
      )
    )
  );
}

// The filter form; `onApply(state)` gets what it holds. `markField` points at the input an
// error names ("filter.amountMin" -> the amount field).
function filterForm(state, onApply) {
  const active = activeFilterCount(state);
  const zoneNote = h("span", { class: "help", id: "f-zone" }, "Days in the merchant's time zone");
  const more = h(
    "details",
    { class: "more-filters", open: active > 0 },
    h("summary", {}, active ? `Filters (${active} in use)` : "Filters"),
    h(
      "div",
      { class: "filter-grid" },
      checkboxGroup("states", "State", STATES, state.states),
      checkboxGroup("processors", "Processor", PROCESSORS, state.processors),
      checkboxGroup("recoveredBy", "Recovered by", ACTORS, state.recoveredBy),
      checkboxGroup(
        "declineCategories",
        "Decline category",
        DECLINE_CATEGORIES,
        state.declineCategories
      ),
      h(
        "div",
        { class: "filter-fields" },
        h(
          "div",
          { class: "group" },
          textField("currencies", "Currencies", state.currencies.join(", "), {
            autocomplete: "off",
            spellcheck: "false",
          }),
          h("span", { class: "help" }, "ISO codes, e.g. EUR, USD")
        ),
        h(
          "div",
          { class: "group" },
          h(
            "div",
            { class: "pair" },
            textField("failedAfter", "Failed on or after", state.failedAfter, { type: "date" }),
            textField("failedBefore", "Failed before", state.failedBefore, { type: "date" })
          ),
          zoneNote
        ),
        h(
          "div",
          { class: "group" },
          h(
            "div",
            { class: "pair" },
            textField("amountMin", "Amount from", state.amountMin, {
              inputmode: "decimal",
              autocomplete: "off",
            }),
            textField("amountMax", "Amount to", state.amountMax, {
              inputmode: "decimal",
              autocomplete: "off",
            })
          ),
          h("span", { class: "help" }, "In the one currency chosen, e.g. 12.50")
        )
      )
    )
  );

  const element = h(
    "form",
    {
      class: "payments-filters card",
      role: "search",
      "aria-label": "Filter payments",
      onsubmit: (event) => {
        event.preventDefault();
        onApply(read());
      },
    },
    h(
      "div",
      { class: "inline" },
      textField(
        "search",
        "Search",
        state.search,
        { type: "search", autocomplete: "off", spellcheck: "false", maxlength: 255 },
        "Exact payment id, invoice, customer reference or card last 4"
      ),
      selectField("orderBy", "Sort by", ORDER_FIELDS, state.orderBy),
      selectField(
        "direction",
        "Order",
        [
          ["DESC", "Descending"],
          ["ASC", "Ascending"],
        ],
        state.direction
      ),
      selectField(
        "first",
        "Per page",
        PAGE_SIZES.map((n) => [n, String(n)]),
        state.first
      ),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit" }, "Apply"),
        h(
          "button",
          {
            type: "button",
            class: "secondary",
            onclick: () => onApply(readState(new URLSearchParams())),
          },
          "Clear"
        )
      )
    ),
    more
  );

  function read() {
    const data = new FormData(element);
    const text = (name) => String(data.get(name) || "").trim();
    return {
      ...state,
      search: text("search"),
      states: data.getAll("states"),
      processors: data.getAll("processors"),
      recoveredBy: data.getAll("recoveredBy"),
      declineCategories: data.getAll("declineCategories"),
      currencies: text("currencies")
        .split(/[\s,]+/)
        .filter(Boolean)
        .map((c) => c.toUpperCase()),
      failedAfter: text("failedAfter"),
      failedBefore: text("failedBefore"),
      amountMin: text("amountMin"),
      amountMax: text("amountMax"),
      orderBy: text("orderBy"),
      direction: text("direction"),
      first: Number(text("first")),
    };
  }

  function markField(field, message) {
    if (!field) return;
    // "filter.amountMin" / "orderBy.field" / "after" -> the form's own names.
    const name =
      { "orderBy.field": "orderBy", "orderBy.direction": "direction" }[field] ||
      field.replace(/^filter\./, "");
    const target = element.querySelector(`#f-${CSS.escape(name)}`);
    if (!target) return;
    if (target.tagName === "FIELDSET" || target.closest("details")) more.open = true;
    const note = h("span", { class: "field-error", id: `f-${name}-error` }, message);
    target.setAttribute("aria-invalid", "true");
    target.setAttribute(
      "aria-describedby",
      [target.getAttribute("aria-describedby"), note.id].filter(Boolean).join(" ")
    );
    (target.tagName === "FIELDSET" ? target : target.parentElement).append(note);
  }

  function setTimeZone(timeZone) {
    zoneNote.textContent = `Days in the merchant's time zone, ${timeZone}`;
  }

  return { element, markField, setTimeZone };
}

// ---- the table ---------------------------------------------------------------------------

const STATE_TONES = {
  RECOVERED: "good",
  EXHAUSTED: "bad",
  NOT_RETRYABLE: "bad",
  RETRYING: "warn",
  SCHEDULED: "info",
  PENDING: "info",
};

export function stateBadge(state) {
  return h(
    "span",
    { class: "badge state", dataset: { tone: STATE_TONES[state] || "none" } },
    label(state)
  );
}

// The table of one page; `update(payment)` redraws a row in place and marks it fresh.
function paymentsTable(rows, ctx, timeZone, state, time) {
  const columns = [
    [
      "Payment",
      (p) =>
        h(
          "a",
          { href: ctx.merchantPath(ctx.merchant.id, `payments/${encodeURIComponent(p.id)}`) },
          p.processorPaymentId
        ),
      null,
    ],
    ["Customer", (p) => (p.customer ? p.customer.externalRef : "—"), null],
    ["Amount", (p) => formatMoney(p.amount.amountMinor, p.amount.currency), "num"],
    ["State", (p) => stateBadge(p.state), null],
    ["Decline", (p) => label(p.decline.category), null],
    [
      "Card",
      (p) =>
        p.card ? [`${p.card.brand} `, h("span", { class: "nowrap" }, `·· ${p.card.last4}`)] : "—",
      null,
    ],
    ["Attempts", (p) => formatCount(p.attemptCount), "num"],
    ["Failed", (p) => time(p.failedAt), null],
    ["Next retry / recovered", (p) => upcoming(p, time), null],
  ];
  const byKey = new Map(rows.map((p) => [`${p.processor}:${p.processorPaymentId}`, p.id]));
  const rowsById = new Map();

  const rowOf = (payment, fresh = false) => {
    const row = h(
      "tr",
      { class: fresh ? "fresh" : null, dataset: { paymentId: payment.id, state: payment.state } },
      // The span keeps a cell's content together when a phone shows the row as a card.
      columns.map(([title, cell, kind]) =>
        h("td", { class: kind, dataset: { label: title } }, h("span", {}, cell(payment)))
      )
    );
    rowsById.set(payment.id, row);
    return row;
  };

  if (!rows.length) {
    const filtered = activeFilterCount(state) || state.search;
    return {
      element: h(
        "p",
        { class: "empty" },
        filtered ? "No payments match these filters." : "No payments in recovery yet."
      ),
      idOf: () => null,
      update: () => {},
    };
  }
  const element = h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "payments stack" },
      h("caption", {}, `Payments, ${sortDescription(state)}; times in ${timeZone}`),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          columns.map(([title, , kind]) => h("th", { scope: "col", class: kind }, title))
        )
      ),
      h(
        "tbody",
        {},
        rows.map((p) => rowOf(p))
      )
    )
  );
  return {
    element,
    idOf: (processor, processorPaymentId) =>
      byKey.get(`${processor}:${processorPaymentId}`) || null,
    update(payment) {
      const old = rowsById.get(payment.id);
      if (old) old.replaceWith(rowOf(payment, true));
    },
  };
}

function sortDescription(state) {
  const field = ORDER_FIELDS.find(([f]) => f === state.orderBy)[1]
    .replace(" (one currency)", "")
    .toLowerCase();
  return `by ${field}, ${state.direction === "ASC" ? "ascending" : "descending"}`;
}

function upcoming(payment, time) {
  if (payment.recoveredAt) {
    return [
      h("span", { class: "nowrap" }, time(payment.recoveredAt)),
      h(
        "span",
        { class: "sub" },
        `recovered${payment.recoveredBy ? ` by ${label(payment.recoveredBy).toLowerCase()}` : ""}`
      ),
    ];
  }
  if (payment.nextRetryAt) return time(payment.nextRetryAt);
  return "—";
}

// Times in the list, short: the caption names the zone, and the year is shown only when it is
// not the portal's current one (the demo's clock runs ahead of the browser's).
function timeFormat(timeZone, serverTime) {
  const parts = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZone };
  const sameYear = new Intl.DateTimeFormat(undefined, parts);
  const otherYear = new Intl.DateTimeFormat(undefined, { ...parts, year: "numeric" });
  const yearOf = new Intl.DateTimeFormat("en", { year: "numeric", timeZone });
  const currentYear = yearOf.format(new Date(serverTime));
  return (iso) => {
    if (!iso) return "—";
    const at = new Date(iso);
    return (yearOf.format(at) === currentYear ? sameYear : otherYear).format(at);
  };
}
