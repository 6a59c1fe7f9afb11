// Support: every merchant with its recovery status (pause, resume), the bulk actions with
// their dry-run count shown before anything changes, and the dead letters (raw records the
// normalizer could not read) per processor connection, with a replay to read them again.
// Support keys only: the API refuses these fields and mutations to other keys anyway, so
// other keys get a plain explanation instead of a page of refusals.

import { gql, mutate } from "../api.js";
import { DECLINE_CATEGORIES, PROCESSORS } from "../enums.js";
import { reloadMerchants } from "../main.js";
import {
  announce,
  askReason,
  badge,
  errorBox,
  formatCount,
  formatDateTime,
  h,
  label,
  loading,
  section,
  stacked,
  table,
} from "../dom.js";

const MERCHANTS_PAGE = 100;
// Dead-letter counts are read for this many merchants at a time (each merchant's connections
// cost a page in the API's cost limit).
const DEAD_LETTER_MERCHANTS = 20;
const DEAD_LETTERS_PAGE = 20;
// Bulk actions and replays are followed this often (ms) until they end.
const FOLLOW_EVERY = 1500;

export const MERCHANTS_QUERY = `
  query SupportMerchants($first: Int!, $after: String) {
    merchants(first: $first, after: $after) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { node { id name status createdAt } }
    }
  }
`;

const CANCEL_MUTATION = `
  mutation BulkCancel(
    $filter: PaymentFilter!, $merchantIds: [ID!], $dryRun: Boolean!, $reason: String!,
    $clientMutationId: String
  ) {
    cancelPaymentRecoveries(
      filter: $filter, merchantIds: $merchantIds, dryRun: $dryRun, reason: $reason,
      clientMutationId: $clientMutationId
    ) {
      errors { code message field }
      count
      dryRun
      bulkAction { id kind status expectedCount succeededCount skippedCount error }
    }
  }
`;

const PAUSE_MUTATION = `
  mutation BulkPause($merchantIds: [ID!]!, $dryRun: Boolean!, $reason: String!, $clientMutationId: String) {
    pauseMerchantsRecovery(
      merchantIds: $merchantIds, dryRun: $dryRun, reason: $reason, clientMutationId: $clientMutationId
    ) {
      errors { code message field }
      count
      dryRun
      bulkAction { id kind status expectedCount succeededCount skippedCount error }
    }
  }
`;

const BULK_ACTION_QUERY = `
  query BulkAction($id: ID!) {
    node(id: $id) {
      ... on BulkAction {
        id kind status expectedCount succeededCount skippedCount error reason requestedBy
        createdAt finishedAt
      }
    }
  }
`;

const CONNECTIONS_QUERY = `
  query SupportConnections($first: Int!, $after: String) {
    merchants(first: $first, after: $after) {
      pageInfo { hasNextPage endCursor }
      edges {
        node {
          id
          name
          processorConnections {
            id name kind status lastError
            deadLetters(first: 1) { totalCount }
          }
        }
      }
    }
  }
`;

export const DEAD_LETTERS_QUERY = `
  query DeadLetters($id: ID!, $first: Int!, $after: String) {
    node(id: $id) {
      ... on ProcessorConnection {
        id
        name
        deadLetters(first: $first, after: $after) {
          totalCount
          pageInfo { hasNextPage endCursor }
          edges {
            node {
              id reason createdAt normalizerVersion
              rawRecord { id externalId processor receivedAt normalizedAt payload }
            }
          }
        }
      }
    }
  }
`;

const REPLAY_MUTATION = `
  mutation Replay($id: ID!, $reason: String!) {
    replayConnection(id: $id, reason: $reason) {
      errors { code message field }
      queued
      job { id state enqueuedAt startedAt finishedAt result error }
    }
  }
`;

const JOB_QUERY = `
  query Job($id: ID!) {
    backgroundJob(id: $id) { id state enqueuedAt startedAt finishedAt result error }
  }
`;

// What a bulk cancel ends: only payments waiting for a retry.
const CANCELLABLE = ["PENDING", "SCHEDULED"];

// ---- helpers -----------------------------------------------------------------------------

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = window.setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      window.clearTimeout(timer);
      reject(new DOMException("The screen was left.", "AbortError"));
    }, { once: true });
  });
}

// An id making a submission idempotent: a double click or a resent request runs it once.
function submissionId() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
  return `bulk-${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

function plural(count, one, many = `${one}s`) {
  return `${formatCount(count)} ${count === 1 ? one : many}`;
}

const STATUS_TONES = { ACTIVE: "good", PAUSED: "warn", ERROR: "bad", DISCONNECTED: null };
const ACTION_TONES = { SUCCEEDED: "good", FAILED: "bad", QUEUED: "warn", RUNNING: "warn" };

// ---- the screen --------------------------------------------------------------------------

export async function render(root, ctx) {
  root.append(h("h1", {}, "Support"));
  if (ctx.viewer.role !== "SUPPORT") {
    root.append(
      h(
        "div",
        { class: "card support-only", role: "note" },
        h("p", {}, h("strong", {}, "Support keys only. "), `This dashboard is signed in with a ${ctx.viewer.role.toLowerCase()} key, which may not run bulk actions or read other merchants' dead letters.`),
        h("p", { class: "help" }, "Sign out and sign in with a support key to use this screen.")
      )
    );
    return;
  }
  const screen = {
    ctx,
    signal: ctx.signal,
    merchants: [],
    selected: new Set(),
    // Told when the merchants or the selection change (the bulk forms' counts go stale).
    listeners: new Set(),
  };
  const merchants = merchantsSection(screen);
  const cancel = bulkCancelSection(screen);
  const pause = bulkPauseSection(screen);
  const deadLetters = deadLettersSection(screen);
  root.append(
    h("p", { class: "help" }, "Every merchant's recovery; bulk actions count what they would change before they run, and every change needs a reason for the audit log."),
    merchants.element,
    cancel.element,
    pause.element,
    deadLetters.element
  );
  // Loaded after render returns, so the shell's focus on the heading comes first (see
  // settings.js); each section shows its own errors.
  merchants.load();
  deadLetters.load();
}

function changed(screen) {
  for (const listener of screen.listeners) listener();
}

// ---- merchants ---------------------------------------------------------------------------

function merchantsSection(screen) {
  const { signal, ctx } = screen;
  const body = h("div", {}, loading());
  const selection = h("p", { class: "help", id: "merchant-selection", "aria-live": "polite" });
  const element = section(
    "merchants",
    "Merchants",
    h("p", { class: "help" }, "Select merchants for the bulk actions below."),
    selection,
    body
  );
  let page = null;
  let total = 0;

  function showSelection() {
    const count = screen.selected.size;
    selection.textContent = count
      ? `${plural(count, "merchant")} selected: ${screen.merchants.filter((m) => screen.selected.has(m.id)).map((m) => m.name).join(", ")}.`
      : "No merchant selected.";
  }

  async function setStatus(merchant, pause) {
    const verb = pause ? "Pause" : "Resume";
    const reason = await askReason(`${verb} recovery at ${merchant.name}`, {
      confirm: verb,
      detail: pause
        ? "No payment of this merchant is retried until its recovery is resumed."
        : "Its scheduled payments are retried again.",
    });
    if (!reason) return;
    const name = pause ? "pauseMerchantRecovery" : "resumeMerchantRecovery";
    const payload = await mutate(
      `mutation ($id: ID!, $reason: String!) {
        ${name}(merchantId: $id, reason: $reason) { errors { code message field } merchant { id status } }
      }`,
      { id: merchant.id, reason },
      name,
      signal
    );
    merchant.status = payload.merchant.status;
    announce(`${merchant.name}: recovery ${pause ? "paused" : "resumed"}.`, { tone: "success" });
    show();
    changed(screen);
    await reloadMerchants();
  }

  function statusButton(merchant) {
    const pause = merchant.status === "ACTIVE";
    const button = h(
      "button",
      { type: "button", class: "secondary", "aria-label": `${pause ? "Pause" : "Resume"} recovery at ${merchant.name}` },
      pause ? "Pause…" : "Resume…"
    );
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await setStatus(merchant, pause);
      } catch (error) {
        if (error.name !== "AbortError") announce(`${merchant.name} was not changed: ${error.message}`, { tone: "error" });
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  function show() {
    const all = h("input", {
      type: "checkbox",
      id: "select-all-merchants",
      checked: screen.merchants.length > 0 && screen.selected.size === screen.merchants.length,
      onchange: (event) => {
        screen.selected = new Set(event.target.checked ? screen.merchants.map((m) => m.id) : []);
        show();
        changed(screen);
      },
    });
    body.replaceChildren(
      h("div", { class: "checkbox select-all" }, all, h("label", { for: "select-all-merchants" }, "Select every merchant shown")),
      stacked(
        table({
          caption: `Merchants (${formatCount(screen.merchants.length)} of ${formatCount(total)})`,
          empty: "No merchant yet.",
          columns: [
            {
              title: "Select",
              render: (m) =>
                h("input", {
                  type: "checkbox",
                  class: "select-merchant",
                  "aria-label": `Select ${m.name}`,
                  checked: screen.selected.has(m.id),
                  onchange: (event) => {
                    if (event.target.checked) screen.selected.add(m.id);
                    else screen.selected.delete(m.id);
                    all.checked = screen.selected.size === screen.merchants.length;
                    showSelection();
                    changed(screen);
                  },
                }),
            },
            {
              title: "Merchant",
              render: (m) =>
                h(
                  "span",
                  {},
                  h("a", { href: ctx.merchantPath(m.id, "overview") }, m.name),
                  " · ",
                  h("a", { href: ctx.merchantPath(m.id, "settings"), class: "help" }, "settings")
                ),
            },
            { title: "Recovery", render: (m) => badge(label(m.status), m.status === "ACTIVE" ? "good" : "warn") },
            { title: "Added", render: (m) => formatDateTime(m.createdAt, "UTC") },
            { title: "", render: statusButton },
          ],
          rows: screen.merchants,
          rowAttributes: (m) => ({ dataset: { merchant: m.id } }),
        })
      ),
      ...(page && page.hasNextPage
        ? [h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: () => load(true) }, "Show more merchants"))]
        : [])
    );
    showSelection();
  }

  async function load(more = false) {
    try {
      const data = await gql(
        MERCHANTS_QUERY,
        { first: MERCHANTS_PAGE, after: more && page ? page.endCursor : null },
        { signal }
      );
      const merchants = data.merchants.edges.map((e) => e.node);
      screen.merchants = more ? [...screen.merchants, ...merchants] : merchants;
      page = data.merchants.pageInfo;
      total = data.merchants.totalCount;
      show();
      changed(screen);
    } catch (error) {
      if (error.name === "AbortError") return;
      body.replaceChildren(errorBox(error, { retry: () => load(more) }));
    }
  }

  screen.reloadMerchantList = () => load();
  return { element, load };
}

// ---- following a bulk action -------------------------------------------------------------

// A cancel's job acts on the payments counted at submission that still match when it reaches
// them, so it may change fewer than that count (never more): both are shown.
function bulkProgress(action) {
  const cancel = action.kind === "CANCEL_PAYMENT_RECOVERIES";
  const done = plural(action.succeededCount, cancel ? "payment" : "merchant");
  const running = action.status === "QUEUED" || action.status === "RUNNING";
  return h(
    "div",
    { class: "bulk-progress", dataset: { status: action.status, action: action.id } },
    badge(label(action.status), ACTION_TONES[action.status]),
    " ",
    `${done} ${cancel ? "canceled" : "paused"}${running ? " so far" : ""}`,
    ` (${formatCount(action.expectedCount)} counted when submitted)`,
    action.skippedCount
      ? `; ${formatCount(action.skippedCount)} left alone (${cancel ? "ended or in flight meanwhile" : "already paused"})`
      : "",
    ".",
    action.error ? h("div", { class: "row-error" }, action.error) : null
  );
}

// Reads the action again until its job ends, showing its progress in `slot`.
async function follow(action, slot, signal) {
  let current = action;
  slot.replaceChildren(bulkProgress(current));
  while (current.status === "QUEUED" || current.status === "RUNNING") {
    await sleep(FOLLOW_EVERY, signal);
    const data = await gql(BULK_ACTION_QUERY, { id: current.id }, { signal });
    if (!data.node) break;
    current = data.node;
    slot.replaceChildren(bulkProgress(current));
  }
  return current;
}

// ---- bulk cancel -------------------------------------------------------------------------

function checkboxGroup(name, legend, values) {
  return h(
    "fieldset",
    { class: "field", dataset: { field: name } },
    h("legend", {}, legend),
    h(
      "div",
      { class: "category-grid" },
      values.map((value) =>
        h(
          "div",
          { class: "checkbox" },
          h("input", { type: "checkbox", id: `cancel-${name}-${value}`, name, value }),
          h("label", { for: `cancel-${name}-${value}` }, label(value))
        )
      )
    )
  );
}

function bulkCancelSection(screen) {
  const { signal } = screen;
  const scopeSelected = h("input", { type: "radio", name: "cancel-scope", id: "cancel-scope-selected", value: "selected", checked: true });
  const scopeAll = h("input", { type: "radio", name: "cancel-scope", id: "cancel-scope-all", value: "all" });
  const currencies = h("input", { id: "cancel-currencies", type: "text", autocomplete: "off", spellcheck: "false", placeholder: "EUR, USD" });
  const failedAfter = h("input", { id: "cancel-failed-after", type: "date" });
  const failedBefore = h("input", { id: "cancel-failed-before", type: "date" });
  const search = h("input", { id: "cancel-search", type: "search", autocomplete: "off", spellcheck: "false" });
  const result = h("div", { id: "cancel-result", "aria-live": "polite" });
  const countButton = h("button", { type: "submit" }, "Count (dry run)");

  const form = h(
    "form",
    {
      id: "cancel-form",
      class: "bulk-form",
      onsubmit: (event) => {
        event.preventDefault();
        count();
      },
      // The count shown is for the form as it was: any change makes it stale.
      oninput: () => stale(),
      onchange: () => stale(),
    },
    h(
      "fieldset",
      { class: "field" },
      h("legend", {}, "Merchants"),
      h("div", { class: "checkbox" }, scopeSelected, h("label", { for: "cancel-scope-selected", id: "cancel-scope-selected-label" }, "The merchants selected above")),
      h("div", { class: "checkbox" }, scopeAll, h("label", { for: "cancel-scope-all" }, "Every merchant"))
    ),
    checkboxGroup("declineCategories", "First decline in (none ticked: any)", DECLINE_CATEGORIES),
    checkboxGroup("processors", "Processor (none ticked: any)", PROCESSORS),
    h(
      "div",
      { class: "bulk-fields" },
      h("div", { class: "field" }, h("label", { for: "cancel-currencies" }, "Currencies"), currencies, h("p", { class: "help" }, "ISO codes separated by commas; empty: any.")),
      h("div", { class: "field" }, h("label", { for: "cancel-failed-after" }, "First failed on or after (UTC)"), failedAfter),
      h("div", { class: "field" }, h("label", { for: "cancel-failed-before" }, "First failed before (UTC)"), failedBefore),
      h("div", { class: "field" }, h("label", { for: "cancel-search" }, "Search"), search, h("p", { class: "help" }, "A processor payment id, invoice, customer reference or card's last four digits."))
    ),
    h("p", { class: "help" }, "Only payments waiting for a retry (pending or scheduled) are canceled; a charge in flight is left alone."),
    h("div", { class: "actions" }, countButton),
    result
  );
  const element = section(
    "bulk-cancel",
    "Cancel payment recoveries",
    form
  );

  let counted = null; // {filter, merchantIds, count} of the count shown

  function stale() {
    if (!counted) return;
    counted = null;
    result.replaceChildren(h("p", { class: "help" }, "The filter changed: count again before canceling."));
  }
  screen.listeners.add(() => {
    const label = form.querySelector("#cancel-scope-selected-label");
    label.textContent = `The merchants selected above (${formatCount(screen.selected.size)})`;
    if (scopeSelected.checked) stale();
  });

  function readFilter() {
    const ticked = (name) => [...form.querySelectorAll(`input[name=${name}]:checked`)].map((i) => i.value);
    const filter = { states: CANCELLABLE };
    const categories = ticked("declineCategories");
    if (categories.length) filter.declineCategories = categories;
    const processors = ticked("processors");
    if (processors.length) filter.processors = processors;
    const codes = currencies.value.split(/[\s,]+/).filter(Boolean).map((c) => c.toUpperCase());
    if (codes.length) filter.currencies = codes;
    if (failedAfter.value) filter.failedAfter = `${failedAfter.value}T00:00:00Z`;
    if (failedBefore.value) filter.failedBefore = `${failedBefore.value}T00:00:00Z`;
    if (search.value.trim()) filter.search = search.value.trim();
    return filter;
  }

  // The API's filter for the cancel itself: it ends pending and scheduled payments whatever
  // `states` says, so the states are only sent for the per-merchant counts.
  function cancelFilter(filter) {
    const { states, ...rest } = filter;
    return rest;
  }

  function targets() {
    if (scopeAll.checked) return { merchantIds: null, merchants: screen.merchants };
    const merchants = screen.merchants.filter((m) => screen.selected.has(m.id));
    return { merchantIds: merchants.map((m) => m.id), merchants };
  }

  // Per-merchant counts of what the filter matches, in one request of aliased fields.
  async function perMerchant(filter, merchants) {
    if (!merchants.length) return [];
    const args = merchants.map((_, i) => `$m${i}: ID!`).join(", ");
    const fields = merchants
      .map((_, i) => `m${i}: merchant(id: $m${i}) { id payments(first: 1, filter: $filter) { totalCount isEstimate } }`)
      .join("\n");
    const variables = { filter };
    merchants.forEach((m, i) => {
      variables[`m${i}`] = m.id;
    });
    const data = await gql(`query PerMerchant($filter: PaymentFilter!, ${args}) { ${fields} }`, variables, { signal });
    return merchants.map((m, i) => ({ merchant: m, count: data[`m${i}`] ? data[`m${i}`].payments.totalCount : 0 }));
  }

  async function count() {
    const filter = readFilter();
    const { merchantIds, merchants } = targets();
    // Without an end date, the count ends at the portal's now, and so does the cancel it
    // confirms: payments that fail after the count was shown are not canceled unseen.
    if (!filter.failedBefore) filter.failedBefore = (await gql("{ serverTime }", {}, { signal })).serverTime;
    if (merchantIds && !merchantIds.length) {
      result.replaceChildren(errorBox({ message: "Select at least one merchant above, or choose every merchant.", code: "INVALID" }));
      return;
    }
    countButton.disabled = true;
    result.replaceChildren(loading("Counting…"));
    try {
      const [payload, split] = await Promise.all([
        mutate(
          CANCEL_MUTATION,
          { filter: cancelFilter(filter), merchantIds, dryRun: true, reason: "dry run: count only" },
          "cancelPaymentRecoveries",
          signal
        ),
        // Merchants beyond 100 are not split out: the dry run's total covers them anyway.
        perMerchant(filter, merchants.slice(0, 100)),
      ]);
      const affected = split.filter((s) => s.count > 0);
      const scope = merchantIds ? `the ${plural(merchantIds.length, "selected merchant")}` : "any merchant";
      // The per-merchant counts are read beside the dry run; should they disagree with it
      // (payments move), the dry run's total is the one the cancel is checked against.
      const across = affected.length ? plural(affected.length, "merchant") : "the chosen merchants";
      counted = { filter: cancelFilter(filter), merchantIds, count: payload.count };
      const confirm = h(
        "button",
        { type: "button", class: "danger", id: "cancel-confirm", onclick: () => submit(confirm) },
        `Cancel ${plural(payload.count, "payment")}…`
      );
      result.replaceChildren(
        h(
          "div",
          { class: "dry-run", role: "status", id: "cancel-dry-run" },
          h(
            "p",
            { class: "dry-run-sentence" },
            payload.count
              ? `This would cancel ${plural(payload.count, "payment")} across ${across}` +
                  (merchantIds ? ` (of ${scope}).` : ".")
              : `Nothing to cancel: no pending or scheduled payment of ${scope} matches.`
          ),
          affected.length
            ? h("ul", { class: "per-merchant" }, affected.map((s) => h("li", { dataset: { merchant: s.merchant.id } }, `${s.merchant.name}: ${plural(s.count, "payment")}`)))
            : null,
          payload.count ? h("div", { class: "actions" }, confirm) : null
        )
      );
    } catch (error) {
      if (error.name === "AbortError") return;
      result.replaceChildren(errorBox(error));
    } finally {
      countButton.disabled = false;
    }
  }

  async function submit(button) {
    if (!counted) return;
    const asked = counted;
    const reason = await askReason(`Cancel ${plural(asked.count, "payment")}`, {
      confirm: "Cancel them",
      detail: "Their recovery stops for good: no further retry. Each shows the cancel on its timeline.",
    });
    if (!reason || counted !== asked) return;
    button.disabled = true;
    try {
      const payload = await mutate(
        CANCEL_MUTATION,
        { filter: asked.filter, merchantIds: asked.merchantIds, dryRun: false, reason, clientMutationId: submissionId() },
        "cancelPaymentRecoveries",
        signal
      );
      counted = null;
      const progress = h("div", { id: "cancel-progress" });
      result.replaceChildren(
        h(
          "div",
          { class: "dry-run" },
          h("p", {}, `Submitted: ${plural(payload.count, "payment")} to cancel${payload.count !== asked.count ? ` (${formatCount(asked.count)} at the dry run; payments moved meanwhile)` : ""}.`),
          progress
        )
      );
      const done = await follow(payload.bulkAction, progress, signal);
      announce(
        done.status === "SUCCEEDED" ? `Bulk cancel done: ${plural(done.succeededCount, "payment")} canceled.` : `Bulk cancel ${label(done.status).toLowerCase()}.`,
        { tone: done.status === "FAILED" ? "error" : "success" }
      );
    } catch (error) {
      if (error.name === "AbortError") return;
      button.disabled = false;
      result.append(errorBox(error));
    }
  }

  return { element };
}

// ---- bulk pause --------------------------------------------------------------------------

function bulkPauseSection(screen) {
  const { signal } = screen;
  const result = h("div", { id: "pause-result", "aria-live": "polite" });
  const countButton = h("button", { type: "button", onclick: () => count() }, "Count (dry run)");
  const intro = h("p", { class: "help", id: "pause-intro" });
  const element = section(
    "bulk-pause",
    "Pause merchants' recovery",
    intro,
    h("div", { class: "actions" }, countButton),
    result
  );
  let counted = null;

  screen.listeners.add(() => {
    intro.textContent = screen.selected.size
      ? `Stops recovery at the ${plural(screen.selected.size, "merchant")} selected above (resume them one by one).`
      : "Select merchants above to pause their recovery together.";
    countButton.disabled = screen.selected.size === 0;
    if (counted) {
      counted = null;
      result.replaceChildren(h("p", { class: "help" }, "The selection changed: count again before pausing."));
    }
  });

  async function count() {
    const merchantIds = screen.merchants.filter((m) => screen.selected.has(m.id)).map((m) => m.id);
    if (!merchantIds.length) return;
    countButton.disabled = true;
    result.replaceChildren(loading("Counting…"));
    try {
      const payload = await mutate(
        PAUSE_MUTATION,
        { merchantIds, dryRun: true, reason: "dry run: count only" },
        "pauseMerchantsRecovery",
        signal
      );
      counted = { merchantIds, count: payload.count };
      const already = merchantIds.length - payload.count;
      const confirm = h(
        "button",
        { type: "button", class: "danger", id: "pause-confirm", onclick: () => submit(confirm) },
        `Pause ${plural(payload.count, "merchant")}…`
      );
      result.replaceChildren(
        h(
          "div",
          { class: "dry-run", role: "status", id: "pause-dry-run" },
          h(
            "p",
            { class: "dry-run-sentence" },
            payload.count
              ? `This would pause recovery at ${plural(payload.count, "merchant")}` +
                  (already ? ` (${formatCount(already)} of the ${formatCount(merchantIds.length)} selected ${already === 1 ? "is" : "are"} paused already).` : ".")
              : "Nothing to pause: every selected merchant is paused already."
          ),
          payload.count ? h("div", { class: "actions" }, confirm) : null
        )
      );
    } catch (error) {
      if (error.name === "AbortError") return;
      result.replaceChildren(errorBox(error));
    } finally {
      countButton.disabled = screen.selected.size === 0;
    }
  }

  async function submit(button) {
    if (!counted) return;
    const asked = counted;
    const reason = await askReason(`Pause recovery at ${plural(asked.count, "merchant")}`, {
      confirm: "Pause them",
      detail: "No payment of theirs is retried until each is resumed.",
    });
    if (!reason || counted !== asked) return;
    button.disabled = true;
    try {
      const payload = await mutate(
        PAUSE_MUTATION,
        { merchantIds: asked.merchantIds, dryRun: false, reason, clientMutationId: submissionId() },
        "pauseMerchantsRecovery",
        signal
      );
      counted = null;
      const progress = h("div", { id: "pause-progress" });
      result.replaceChildren(h("div", { class: "dry-run" }, progress));
      const done = await follow(payload.bulkAction, progress, signal);
      announce(
        done.status === "SUCCEEDED" ? `Bulk pause done: ${plural(done.succeededCount, "merchant")} paused.` : `Bulk pause ${label(done.status).toLowerCase()}.`,
        { tone: done.status === "FAILED" ? "error" : "success" }
      );
      await screen.reloadMerchantList();
      await reloadMerchants();
    } catch (error) {
      if (error.name === "AbortError") return;
      button.disabled = false;
      result.append(errorBox(error));
    }
  }

  return { element };
}

// ---- dead letters ------------------------------------------------------------------------

// "stripe (Acme)": the merchant's name added unless the connection's name has it already.
function connectionName(row) {
  const name = row.connection.name;
  return name.includes(row.merchant.name) ? name : `${name} (${row.merchant.name})`;
}

function deadLettersSection(screen) {
  const { signal } = screen;
  const body = h("div", {}, loading());
  const detail = h("div", { id: "dead-letter-detail" });
  const jobs = h("div", { id: "replay-jobs" });
  const element = section(
    "dead-letters",
    "Dead letters",
    h(
      "p",
      { class: "help" },
      "Records a processor sent that could not be read into payments. They stay stored: once the cause is fixed, a replay reads the connection's whole history again."
    ),
    body,
    detail,
    jobs
  );
  const state = { rows: [], page: null, jobs: [] };

  function showConnections() {
    const withLetters = state.rows.filter((r) => r.connection.deadLetters.totalCount > 0).length;
    body.replaceChildren(
      h(
        "p",
        { class: "dead-letter-summary" },
        withLetters
          ? `${plural(withLetters, "connection")} with dead letters, of ${formatCount(state.rows.length)} shown.`
          : `No dead letters on the ${plural(state.rows.length, "connection")} shown.`
      ),
      stacked(
        table({
          caption: "Processor connections, most dead letters first",
          empty: "No processor connection yet.",
          columns: [
            { title: "Merchant", render: (r) => r.merchant.name },
            { title: "Connection", render: (r) => h("span", {}, r.connection.name, h("br"), h("span", { class: "help" }, label(r.connection.kind))) },
            {
              title: "Status",
              render: (r) =>
                h("span", {}, badge(label(r.connection.status), STATUS_TONES[r.connection.status]), r.connection.lastError ? h("div", { class: "row-error" }, r.connection.lastError) : null),
            },
            { title: "Dead letters", numeric: true, render: (r) => formatCount(r.connection.deadLetters.totalCount) },
            {
              title: "",
              render: (r) =>
                h(
                  "div",
                  { class: "row-actions" },
                  r.connection.deadLetters.totalCount
                    ? h(
                        "button",
                        { type: "button", class: "secondary", "aria-label": `Show the dead letters of ${r.connection.name}`, onclick: () => showLetters(r) },
                        "Show"
                      )
                    : null,
                  r.connection.status !== "DISCONNECTED"
                    ? h(
                        "button",
                        { type: "button", class: "secondary", "aria-label": `Replay ${r.connection.name}`, onclick: (event) => replay(r, event.currentTarget) },
                        "Replay…"
                      )
                    : null
                ),
            },
          ],
          rows: state.rows,
          rowAttributes: (r) => ({ dataset: { connection: r.connection.id } }),
        })
      ),
      ...(state.page && state.page.hasNextPage
        ? [h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: () => load(true) }, "More merchants' connections"))]
        : [])
    );
  }

  async function load(more = false) {
    try {
      const data = await gql(
        CONNECTIONS_QUERY,
        { first: DEAD_LETTER_MERCHANTS, after: more && state.page ? state.page.endCursor : null },
        { signal }
      );
      const rows = data.merchants.edges.flatMap((e) =>
        e.node.processorConnections.map((connection) => ({ merchant: e.node, connection }))
      );
      state.rows = (more ? [...state.rows, ...rows] : rows).sort(
        (a, b) => b.connection.deadLetters.totalCount - a.connection.deadLetters.totalCount
      );
      state.page = data.merchants.pageInfo;
      showConnections();
    } catch (error) {
      if (error.name === "AbortError") return;
      body.replaceChildren(errorBox(error, { retry: () => load(more) }));
    }
  }

  async function showLetters(row, after = null, shown = []) {
    if (!after) detail.replaceChildren(loading("Reading the dead letters…"));
    try {
      const data = await gql(DEAD_LETTERS_QUERY, { id: row.connection.id, first: DEAD_LETTERS_PAGE, after }, { signal });
      if (!data.node) {
        detail.replaceChildren(errorBox({ message: "This connection is gone.", code: "NOT_FOUND" }));
        return;
      }
      const page = data.node.deadLetters;
      const letters = [...shown, ...page.edges.map((e) => e.node)];
      const heading = h("h3", { id: "dead-letter-title", tabindex: -1 }, `Dead letters of ${connectionName(row)}`);
      detail.replaceChildren(
        h(
          "div",
          { class: "card dead-letters", "aria-labelledby": "dead-letter-title" },
          heading,
          stacked(
            table({
              caption: `${formatCount(letters.length)} of ${plural(page.totalCount, "dead letter")}, newest first`,
              columns: [
                { title: "Failed", render: (d) => formatDateTime(d.createdAt, "UTC") },
                { title: "Why", render: (d) => h("span", { class: "dead-letter-reason" }, d.reason) },
                { title: "Record", render: (d) => h("span", {}, d.rawRecord.externalId || "no id", h("br"), h("span", { class: "help" }, `${label(d.rawRecord.processor)}, received ${formatDateTime(d.rawRecord.receivedAt, "UTC")}`)) },
                { title: "Normalizer", numeric: true, render: (d) => `v${d.normalizerVersion}` },
                {
                  title: "As received",
                  render: (d) =>
                    h(
                      "details",
                      {},
                      h("summary", {}, "Show the record"),
                      // Scrubbed by the API: no secret or card number is ever in it.
                      h("pre", { class: "payload" }, JSON.stringify(d.rawRecord.payload, null, 2))
                    ),
                },
              ],
              rows: letters,
              rowAttributes: (d) => ({ dataset: { deadLetter: d.id } }),
            })
          ),
          page.pageInfo.hasNextPage
            ? h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: () => showLetters(row, page.pageInfo.endCursor, letters) }, "Show older dead letters"))
            : null
        )
      );
      if (!after) heading.focus();
    } catch (error) {
      if (error.name === "AbortError") return;
      detail.replaceChildren(errorBox(error, { retry: () => showLetters(row) }));
    }
  }

  function showJobs() {
    jobs.replaceChildren(
      ...(state.jobs.length
        ? [
            h("h3", {}, "Replays started here"),
            stacked(
              table({
                caption: "Background jobs",
                columns: [
                  { title: "Connection", render: (j) => connectionName(j.row) },
                  { title: "Job", render: (j) => h("code", {}, j.job.id) },
                  { title: "State", render: (j) => badge(label(j.job.state), ACTION_TONES[j.job.state] || null) },
                  { title: "Queued", render: (j) => formatDateTime(j.job.enqueuedAt, "UTC") },
                  {
                    title: "Outcome",
                    render: (j) =>
                      j.job.error
                        ? h("span", { class: "row-error" }, j.job.error)
                        : j.job.result
                          ? jobResult(j.job.result)
                          : "—",
                  },
                ],
                rows: state.jobs,
                rowAttributes: (j) => ({ dataset: { job: j.job.id, state: j.job.state } }),
              })
            ),
          ]
        : [])
    );
  }

  function jobResult(result) {
    if (typeof result !== "object" || result === null) return String(result);
    const known = ["normalized", "dead_letters", "payments_created"];
    const parts = known.filter((k) => k in result).map((k) => `${k.replace("_", " ")}: ${formatCount(result[k])}`);
    return parts.length ? parts.join(", ") : JSON.stringify(result);
  }

  async function replay(row, button) {
    const reason = await askReason(`Replay ${row.connection.name}`, {
      confirm: "Replay",
      detail: "Its whole raw history is read again with the current normalizer, as a background job; records that still fail stay dead letters.",
    });
    if (!reason) return;
    button.disabled = true;
    try {
      const payload = await mutate(REPLAY_MUTATION, { id: row.connection.id, reason }, "replayConnection", signal);
      const entry = { row, job: payload.job };
      state.jobs = [entry, ...state.jobs.filter((j) => j.job.id !== payload.job.id)];
      showJobs();
      announce(payload.queued ? `Replay of ${row.connection.name} queued.` : `A replay of ${row.connection.name} was already running: following it.`, { tone: "success" });
      while (entry.job.state === "QUEUED" || entry.job.state === "RUNNING") {
        await sleep(FOLLOW_EVERY, signal);
        const data = await gql(JOB_QUERY, { id: entry.job.id }, { signal });
        if (!data.backgroundJob) break;
        entry.job = data.backgroundJob;
        showJobs();
      }
      await load();
    } catch (error) {
      if (error.name !== "AbortError") announce(`The replay was not started: ${error.message}`, { tone: "error" });
    } finally {
      button.disabled = false;
    }
  }

  return { element, load };
}
