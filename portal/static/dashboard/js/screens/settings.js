// Settings of one merchant: the retry policy (preview before saving, version conflicts
// explained), its history, the processor connections, the webhook endpoints with their recent
// deliveries, and the API keys.
//
// Each section loads and fails on its own, so one refused query (a partner key reading keys,
// say) does not blank the rest of the page.

import { ApiError, apiKey, gql, mutate } from "../api.js";
import { DECLINE_CATEGORIES } from "../enums.js";
import {
  announce,
  askReason,
  badge,
  errorBox,
  formatCount,
  formatDateTime,
  formatMoney,
  formatPercent,
  h,
  label,
  loading,
  section,
  stacked,
  table,
} from "../dom.js";

// ---- queries -----------------------------------------------------------------------------

const POLICY_FIELDS = `
  version strategy enabled maxAttempts windowDays minHoursBetweenAttempts fixedScheduleDays
  quietHours { startHour endHour } timezone excludedDeclineCategories endAction
  controlGroupPercent updatedAt updatedBy
`;

const HISTORY_PAGE = 10;

export const POLICY_QUERY = `
  query SettingsPolicy($id: ID!, $first: Int!, $after: String) {
    merchant(id: $id) {
      id
      retryPolicy {
        ${POLICY_FIELDS}
        history(first: $first, after: $after) {
          totalCount
          pageInfo { hasNextPage endCursor }
          edges { node { version actor reason createdAt changes { field old new } } }
        }
      }
    }
  }
`;

const PREVIEW_MUTATION = `
  mutation PreviewPolicy($merchantId: ID!, $input: RetryPolicyChangesInput!) {
    previewRetryPolicy(merchantId: $merchantId, input: $input) {
      errors { code message field }
      preview {
        basedOnVersion
        changes { field old new }
        redecidedPayments rescheduledPayments scoredPayments modelId
        currencies {
          currency payments amount
          currentExpectedRecoveries proposedExpectedRecoveries expectedRecoveriesChange
          currentExpectedRecoveredAmount proposedExpectedRecoveredAmount expectedRecoveredAmountChange
        }
        payments {
          paymentId amount currency
          current { recoveryProbability retryTimes }
          proposed { recoveryProbability retryTimes }
        }
      }
    }
  }
`;

const UPDATE_MUTATION = `
  mutation UpdatePolicy($input: UpdateRetryPolicyInput!) {
    updateRetryPolicy(input: $input) {
      errors { code message field }
      retryPolicy { version }
    }
  }
`;

const CONNECTIONS_QUERY = `
  query SettingsConnections($id: ID!) {
    merchant(id: $id) {
      id
      processorConnections {
        id name kind status lastError lastPolledAt cursorAt paymentsIngested
        deadLetters(first: 1) { totalCount }
      }
    }
  }
`;

const CONNECTION_FIELDS = "id name kind status lastError lastPolledAt cursorAt paymentsIngested";

const DELIVERY_FIELDS = `
  id eventType status attempts createdAt deliveredAt lastStatusCode lastError nextAttemptAt
  redeliveryOf
`;
const DELIVERIES_SHOWN = 10;

const ENDPOINT_FIELDS = `
  id url enabled eventTypes createdAt previousSecretExpiresAt
  recentDeliveries(first: ${DELIVERIES_SHOWN}) { ${DELIVERY_FIELDS} }
`;

const WEBHOOKS_QUERY = `
  query SettingsWebhooks($id: ID!) {
    merchant(id: $id) { id webhookEndpoints { ${ENDPOINT_FIELDS} } }
    webhookEventTypes { type description }
  }
`;

const ENDPOINT_QUERY = `
  query SettingsEndpoint($id: ID!) {
    node(id: $id) { ... on WebhookEndpoint { ${ENDPOINT_FIELDS} } }
  }
`;

const KEY_FIELDS = "id name prefix role scopes createdAt expiresAt lastUsedAt revokedAt merchants { id name }";
const KEYS_PAGE = 25;

export const KEYS_QUERY = `
  query SettingsKeys($first: Int!, $after: String) {
    serverTime
    apiKeys(first: $first, after: $after) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { node { ${KEY_FIELDS} } }
    }
  }
`;

// ---- shared helpers ----------------------------------------------------------------------


// A box showing a secret the API returns once (a key's token, an endpoint's signing secret).
// `hide` is what "I have saved it" does (the box goes, unless told otherwise).
function secretBox(title, value, note, { hide } = {}) {
  const id = `secret-${Math.random().toString(36).slice(2)}`;
  const input = h("input", { id, class: "secret-value", readonly: true, value, spellcheck: "false" });
  const copy = h(
    "button",
    {
      type: "button",
      class: "secondary",
      onclick: async () => {
        input.select();
        try {
          await navigator.clipboard.writeText(value);
          announce(`${title} copied.`, { tone: "success" });
        } catch {
          announce("Copying is not allowed here: select the text and copy it.", { tone: "error" });
        }
      },
    },
    "Copy"
  );
  const box = h(
    "div",
    { class: "secret-box", role: "status" },
    h("label", { for: id }, title),
    h("div", { class: "secret-row" }, input, copy),
    h("p", { class: "help" }, note),
    h("button", { type: "button", class: "link", onclick: () => (hide ? hide() : box.remove()) }, "I have saved it: hide")
  );
  return box;
}

// Shows a secret the API has just returned, once. The portal made it whatever the page did
// meanwhile, so it is never dropped: in `slot` while its section is on the page, otherwise (the
// user moved to another screen, or this one was drawn again while the answer was on its way) in
// a dialog over whatever screen is showing now.
function showSecret(slot, title, value, note) {
  if (slot.isConnected) {
    slot.replaceChildren(secretBox(title, value, note));
    return;
  }
  const dialog = h("dialog", { class: "dialog secret-dialog", "aria-label": title });
  const close = () => dialog.close();
  dialog.append(
    secretBox(title, value, note, { hide: close }),
    h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: close }, "Close"))
  );
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

// A button that disables itself while its action runs, and shows what failed next to it.
function actionButton(text, action, { tone, describe } = {}) {
  const button = h("button", {
    type: "button",
    class: tone || null,
    "aria-label": describe || null,
  }, text);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      if (error.name !== "AbortError") announce(`${text} failed: ${error.message}`, { tone: "error" });
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// ---- the screen --------------------------------------------------------------------------

export async function render(root, ctx) {
  if (!ctx.merchant) {
    root.append(h("h1", {}, "Settings"), h("p", { class: "empty" }, "Choose a merchant first."));
    return;
  }
  const role = ctx.viewer.role;
  const name = ctx.merchant.name;
  root.append(
    h("h1", {}, `Settings${name ? ` · ${name}` : ""}`),
    h(
      "nav",
      { class: "section-links", "aria-label": "Settings sections" },
      h(
        "ul",
        {},
        [
          ["policy", "Retry policy"],
          ["policy-history", "Policy history"],
          ["connections", "Processor connections"],
          ["webhooks", "Webhooks"],
          ["api-keys", "API keys"],
        ].map(([id, title]) =>
          h(
            "li",
            {},
            h(
              "a",
              {
                href: `#${id}`,
                // The fragment is the router's: scroll to the section instead of following it.
                onclick: (event) => {
                  event.preventDefault();
                  const target = document.getElementById(id);
                  if (target) {
                    target.scrollIntoView({ behavior: "smooth", block: "start" });
                    const heading = target.querySelector("h2");
                    if (heading) {
                      heading.tabIndex = -1;
                      heading.focus({ preventScroll: true });
                    }
                  }
                },
              },
              title
            )
          )
        )
      )
    )
  );
  const screen = { ctx, role, merchantId: ctx.merchant.id, signal: ctx.signal, timeZone: "UTC" };
  const policy = policySection(screen);
  const connections = connectionsSection(screen);
  const webhooks = webhooksSection(screen);
  const keys = keysSection(screen);
  root.append(policy.element, policy.historyElement, connections.element, webhooks.element, keys.element);
  // The sections load after render returns: the shell then focuses the heading at once, not
  // later in the middle of the user's first edit. The policy comes first: its time zone is the
  // one the other sections show times in.
  policy.load().then(() => Promise.all([connections.load(), webhooks.load(), keys.load()]));
}

// ---- retry policy ------------------------------------------------------------------------

const STRATEGIES = [
  ["FIXED_SCHEDULE", "Fixed schedule (the days below)"],
  ["DECLINE_AWARE", "Decline-aware rules"],
  ["MODEL", "Model (learned retry timing)"],
];

const END_ACTIONS = [
  ["MARK_EXHAUSTED", "Mark the payment exhausted"],
  ["LEAVE_INVOICE_OPEN", "Leave the invoice open"],
  ["CANCEL_SUBSCRIPTION", "Cancel the subscription"],
];

// The settings, in the order the form shows them, named as the API names them.
const FIELD_LABELS = {
  enabled: "Retries enabled",
  strategy: "Strategy",
  maxAttempts: "Max attempts",
  windowDays: "Window (days)",
  minHoursBetweenAttempts: "Min hours between attempts",
  fixedScheduleDays: "Fixed schedule days",
  quietHours: "Quiet hours",
  timezone: "Time zone",
  excludedDeclineCategories: "Excluded decline categories",
  endAction: "End action",
  controlGroupPercent: "Control group",
};
const FIELDS = Object.keys(FIELD_LABELS);

function hour(value) {
  return `${String(value).padStart(2, "0")}:00`;
}

// A setting's value as a person reads it (values as the API's JSON gives them).
export function describeValue(field, value) {
  if (value === null || value === undefined) return field === "quietHours" ? "none" : "—";
  switch (field) {
    case "enabled":
      return value ? "on" : "off";
    case "strategy":
      return label(value);
    case "endAction":
      return label(value);
    case "quietHours":
      return `${hour(value.startHour)}–${hour(value.endHour)}`;
    case "fixedScheduleDays":
      return value.length ? `days ${value.join(", ")}` : "none";
    case "excludedDeclineCategories":
      return value.length ? value.map(label).join(", ") : "none";
    case "controlGroupPercent":
      return `${value}%`;
    case "windowDays":
      return `${value} days`;
    case "minHoursBetweenAttempts":
      return `${value} h`;
    default:
      return String(value);
  }
}

function fieldLabel(field) {
  return FIELD_LABELS[field] || field;
}

// The settings of a policy as comparable values (the same shapes as the API's field changes).
function valuesOf(policy) {
  const values = {};
  for (const field of FIELDS) values[field] = policy[field];
  values.quietHours = policy.quietHours
    ? { startHour: policy.quietHours.startHour, endHour: policy.quietHours.endHour }
    : null;
  values.excludedDeclineCategories = [...policy.excludedDeclineCategories].sort();
  return values;
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// The settings `draft` changes over `values`: {field: newValue}.
function differences(values, draft) {
  const changes = {};
  for (const field of FIELDS) {
    if (field in draft && !same(values[field], draft[field])) changes[field] = draft[field];
  }
  return changes;
}

function changeList(changes) {
  return h(
    "ul",
    { class: "change-list" },
    changes.map((c) =>
      h(
        "li",
        { dataset: { field: c.field } },
        h("span", { class: "change-field" }, fieldLabel(c.field)),
        ": ",
        h("span", { class: "change-old" }, describeValue(c.field, c.old)),
        " → ",
        h("span", { class: "change-new" }, describeValue(c.field, c.new))
      )
    )
  );
}

function policySection(screen) {
  const { signal, merchantId } = screen;
  const mayEdit = screen.role === "SUPPORT" || screen.role === "MERCHANT";
  const state = {
    policy: null, // the current version, as last read
    base: null, // the version the form's edits build on
    history: [],
    historyPage: null,
  };

  const summary = h("p", { class: "help", id: "policy-summary" });
  const conflictSlot = h("div", { id: "policy-conflict" });
  const previewSlot = h("div", { id: "policy-preview", "aria-live": "polite" });
  const formErrors = h("div", { id: "policy-errors" });
  const inputs = {};

  function field(name, control, help) {
    const helpId = help ? `policy-${name}-help` : null;
    if (helpId) control.setAttribute("aria-describedby", helpId);
    return h(
      "div",
      { class: "field", dataset: { field: name } },
      h("label", { for: control.id }, fieldLabel(name)),
      control,
      help ? h("p", { class: "help", id: helpId }, help) : null
    );
  }

  function numberInput(name, min, max) {
    inputs[name] = h("input", {
      id: `policy-${name}`,
      type: "number",
      inputmode: "numeric",
      min,
      max,
      step: 1,
      required: true,
    });
    return inputs[name];
  }

  function select(name, options) {
    inputs[name] = h(
      "select",
      { id: `policy-${name}` },
      options.map(([value, text]) => h("option", { value }, text))
    );
    return inputs[name];
  }

  inputs.enabled = h("input", { id: "policy-enabled", type: "checkbox" });
  inputs.fixedScheduleDays = h("input", {
    id: "policy-fixedScheduleDays",
    type: "text",
    inputmode: "numeric",
    autocomplete: "off",
  });
  inputs.quietHoursOn = h("input", {
    id: "policy-quietHours-on",
    type: "checkbox",
    onchange: () => syncQuietHours(),
  });
  const hours = Array.from({ length: 24 }, (_, i) => [String(i), hour(i)]);
  inputs.quietStart = h(
    "select",
    { id: "policy-quietHours-start" },
    hours.map(([v, t]) => h("option", { value: v }, t))
  );
  inputs.quietEnd = h(
    "select",
    { id: "policy-quietHours-end" },
    hours.map(([v, t]) => h("option", { value: v }, t))
  );
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  inputs.timezone = h("input", {
    id: "policy-timezone",
    type: "text",
    list: "policy-timezones",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
  });
  const zoneList = h(
    "datalist",
    { id: "policy-timezones" },
    ["UTC", ...zones.filter((z) => z !== "UTC")].map((z) => h("option", { value: z }))
  );
  inputs.excluded = DECLINE_CATEGORIES.map((category) =>
    h("input", { type: "checkbox", id: `policy-exclude-${category}`, value: category })
  );

  function syncQuietHours() {
    inputs.quietStart.disabled = !inputs.quietHoursOn.checked || !mayEdit;
    inputs.quietEnd.disabled = !inputs.quietHoursOn.checked || !mayEdit;
  }

  const previewButton = h("button", { type: "button", class: "secondary", onclick: () => preview() }, "Preview");
  const saveButton = h("button", { type: "submit" }, "Save…");
  const resetButton = h(
    "button",
    { type: "button", class: "link", onclick: () => discardEdits() },
    "Discard my edits"
  );

  const form = h(
    "form",
    {
      class: "policy-form",
      id: "policy-form",
      novalidate: true,
      onsubmit: (event) => {
        event.preventDefault();
        save();
      },
      oninput: () => editsChanged(),
      onchange: () => editsChanged(),
    },
    h(
      "div",
      { class: "policy-grid" },
      h(
        "div",
        { class: "field checkbox", dataset: { field: "enabled" } },
        inputs.enabled,
        h("label", { for: "policy-enabled" }, "Retries enabled"),
        h("p", { class: "help" }, "Off: the portal retries nothing for this merchant.")
      ),
      field("strategy", select("strategy", STRATEGIES), "How retry times are chosen."),
      field("maxAttempts", numberInput("maxAttempts", 1, 15), "Most retries per payment, 1–15."),
      field("windowDays", numberInput("windowDays", 1, 60), "Days after the first failure to retry in, 1–60."),
      field("minHoursBetweenAttempts", numberInput("minHoursBetweenAttempts", 0, 720), "Minimum spacing between two retries."),
      field(
        "fixedScheduleDays",
        inputs.fixedScheduleDays,
        "Days after the first failure, increasing, separated by commas (e.g. 1, 3, 5, 7)."
      ),
      field("endAction", select("endAction", END_ACTIONS), "What happens when recovery ends unpaid."),
      field(
        "controlGroupPercent",
        numberInput("controlGroupPercent", 0, 50),
        "Percent of payments (0–50) a model policy keeps on the fixed schedule, to measure its uplift."
      ),
      field("timezone", inputs.timezone, "For quiet hours when the customer's own time zone is unknown."),
      h(
        "fieldset",
        { class: "field quiet-hours", dataset: { field: "quietHours" } },
        h("legend", {}, "Quiet hours"),
        h(
          "div",
          { class: "checkbox" },
          inputs.quietHoursOn,
          h("label", { for: "policy-quietHours-on" }, "No retries in these hours of the customer's local time")
        ),
        h(
          "div",
          { class: "quiet-range" },
          h("label", { for: "policy-quietHours-start" }, "From"),
          inputs.quietStart,
          h("label", { for: "policy-quietHours-end" }, "to"),
          inputs.quietEnd
        )
      )
    ),
    h(
      "fieldset",
      { class: "field categories", dataset: { field: "excludedDeclineCategories" } },
      h("legend", {}, "Excluded decline categories (never retried)"),
      h(
        "div",
        { class: "category-grid" },
        inputs.excluded.map((input) =>
          h("div", { class: "checkbox" }, input, h("label", { for: input.id }, label(input.value)))
        )
      )
    ),
    zoneList,
    formErrors,
    h("p", { class: "help", id: "policy-edits", "aria-live": "polite" }),
    mayEdit
      ? h("div", { class: "actions" }, previewButton, saveButton, resetButton)
      : h(
          "p",
          { class: "help" },
          "This key may read the policy; support or the merchant's own key changes it."
        )
  );

  const body = h("div", { class: "card" }, loading());
  const element = section(
    "policy",
    "Retry policy",
    summary,
    conflictSlot,
    body,
    previewSlot
  );

  const historyBody = h("div", {}, loading());
  const historyElement = section("policy-history", "Policy history", historyBody);

  // ---- reading and filling the form ----

  function fill(values) {
    inputs.enabled.checked = values.enabled;
    inputs.strategy.value = values.strategy;
    inputs.maxAttempts.value = values.maxAttempts;
    inputs.windowDays.value = values.windowDays;
    inputs.minHoursBetweenAttempts.value = values.minHoursBetweenAttempts;
    inputs.fixedScheduleDays.value = values.fixedScheduleDays.join(", ");
    inputs.endAction.value = values.endAction;
    inputs.controlGroupPercent.value = values.controlGroupPercent;
    inputs.timezone.value = values.timezone;
    inputs.quietHoursOn.checked = Boolean(values.quietHours);
    inputs.quietStart.value = String(values.quietHours ? values.quietHours.startHour : 22);
    inputs.quietEnd.value = String(values.quietHours ? values.quietHours.endHour : 7);
    for (const input of inputs.excluded) {
      input.checked = values.excludedDeclineCategories.includes(input.value);
    }
    syncQuietHours();
  }

  // The form as settings; `problems` lists what cannot be read (a day that is not a number).
  function read() {
    const problems = [];
    const integer = (name) => {
      const text = inputs[name].value.trim();
      if (!/^-?\d+$/.test(text)) {
        problems.push([name, `${fieldLabel(name)} must be a whole number.`]);
        return null;
      }
      return Number(text);
    };
    const days = inputs.fixedScheduleDays.value
      .split(/[\s,]+/)
      .filter(Boolean)
      .map((part) => (/^\d+$/.test(part) ? Number(part) : NaN));
    if (days.some(Number.isNaN)) {
      problems.push(["fixedScheduleDays", "Fixed schedule days are whole numbers separated by commas."]);
    }
    const draft = {
      enabled: inputs.enabled.checked,
      strategy: inputs.strategy.value,
      maxAttempts: integer("maxAttempts"),
      windowDays: integer("windowDays"),
      minHoursBetweenAttempts: integer("minHoursBetweenAttempts"),
      fixedScheduleDays: days.filter((d) => !Number.isNaN(d)),
      quietHours: inputs.quietHoursOn.checked
        ? { startHour: Number(inputs.quietStart.value), endHour: Number(inputs.quietEnd.value) }
        : null,
      timezone: inputs.timezone.value.trim(),
      excludedDeclineCategories: inputs.excluded.filter((i) => i.checked).map((i) => i.value).sort(),
      endAction: inputs.endAction.value,
      controlGroupPercent: integer("controlGroupPercent"),
    };
    return { draft, problems };
  }

  function clearFieldErrors() {
    formErrors.replaceChildren();
    for (const wrapper of form.querySelectorAll("[data-field]")) {
      wrapper.classList.remove("invalid");
      const message = wrapper.querySelector(".field-error");
      if (message) message.remove();
    }
    for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
  }

  // Shows each problem next to its setting (`field` as the API names it).
  function showFieldErrors(problems) {
    clearFieldErrors();
    const unplaced = [];
    for (const [name, message] of problems) {
      const wrapper = name ? form.querySelector(`[data-field="${name}"]`) : null;
      if (!wrapper) {
        unplaced.push(message);
        continue;
      }
      wrapper.classList.add("invalid");
      const control = wrapper.querySelector("input, select");
      const id = `policy-${name}-error`;
      wrapper.append(h("p", { class: "field-error", id }, message));
      if (control) {
        control.setAttribute("aria-invalid", "true");
        const described = control.getAttribute("aria-describedby");
        control.setAttribute("aria-describedby", described ? `${described} ${id}` : id);
      }
    }
    if (unplaced.length) formErrors.append(errorBox({ message: unplaced.join("; "), code: "INVALID" }));
    const first = form.querySelector("[aria-invalid=true]");
    if (first) first.focus();
  }

  // What the form changes over the version it builds on.
  function pendingChanges() {
    const { draft, problems } = read();
    return { changes: differences(valuesOf(state.base), draft), problems };
  }

  function editsChanged() {
    if (!state.base) return;
    const { changes } = pendingChanges();
    const count = Object.keys(changes).length;
    // Each edited setting is marked where it is, so edits kept after a conflict stand out.
    for (const wrapper of form.querySelectorAll("[data-field]")) {
      wrapper.classList.toggle("edited", wrapper.dataset.field in changes);
    }
    const note = form.querySelector("#policy-edits");
    note.textContent = count
      ? `Unsaved: ${Object.keys(changes).map(fieldLabel).join(", ")}.`
      : "No unsaved edits.";
    // A preview of other edits would mislead: it goes once the form changes.
    if (previewSlot.dataset.for && previewSlot.dataset.for !== JSON.stringify(changes)) {
      previewSlot.replaceChildren();
      delete previewSlot.dataset.for;
    }
  }

  function discardEdits() {
    fill(valuesOf(state.policy));
    state.base = state.policy;
    conflictSlot.replaceChildren();
    previewSlot.replaceChildren();
    delete previewSlot.dataset.for;
    clearFieldErrors();
    for (const wrapper of form.querySelectorAll(".changed-by-other")) wrapper.classList.remove("changed-by-other");
    for (const note of form.querySelectorAll(".other-change")) note.remove();
    editsChanged();
  }

  // ---- loading ----

  async function fetchPolicy(after = null) {
    const data = await gql(POLICY_QUERY, { id: merchantId, first: HISTORY_PAGE, after }, { signal });
    if (!data.merchant) throw new ApiError("This merchant does not exist or is not visible to this key.", { code: "NOT_FOUND" });
    if (!data.merchant.retryPolicy) throw new ApiError("This merchant has no retry policy yet.", { code: "NOT_FOUND" });
    return data.merchant.retryPolicy;
  }

  function showPolicy(policy) {
    state.policy = policy;
    screen.timeZone = policy.timezone || "UTC";
    summary.replaceChildren(
      `Version ${policy.version}, saved by ${policy.updatedBy} on ${formatDateTime(policy.updatedAt, screen.timeZone)}. `,
      policy.enabled ? badge("Retrying", "good") : badge("Retries off", "warn")
    );
    state.history = policy.history.edges.map((e) => e.node);
    state.historyPage = policy.history.pageInfo;
    showHistory(policy.history.totalCount);
  }

  async function load() {
    try {
      const policy = await fetchPolicy();
      showPolicy(policy);
      state.base = policy;
      body.replaceChildren(form);
      fill(valuesOf(policy));
      for (const control of form.querySelectorAll("input, select")) {
        if (!mayEdit) control.disabled = true;
      }
      editsChanged();
    } catch (error) {
      if (error.name === "AbortError") return;
      body.replaceChildren(errorBox(error, { retry: load }));
      historyBody.replaceChildren();
    }
  }

  // ---- preview ----

  async function preview() {
    const { changes, problems } = pendingChanges();
    if (problems.length) return showFieldErrors(problems);
    clearFieldErrors();
    if (!Object.keys(changes).length) {
      previewSlot.replaceChildren(h("p", { class: "empty" }, "Nothing to preview: no setting differs from the current version."));
      return;
    }
    previewButton.disabled = true;
    previewSlot.replaceChildren(loading("Working out what the change would do…"));
    try {
      const payload = await mutate(
        PREVIEW_MUTATION,
        { merchantId, input: changes },
        "previewRetryPolicy",
        signal
      );
      previewSlot.dataset.for = JSON.stringify(changes);
      previewSlot.replaceChildren(previewCard(payload.preview));
    } catch (error) {
      if (error.name === "AbortError") return;
      previewSlot.replaceChildren();
      if (error.code === "INVALID") showFieldErrors(error.errors.map((e) => [e.field, e.message]));
      else previewSlot.append(errorBox(error));
    } finally {
      previewButton.disabled = false;
    }
  }

  function previewCard(p) {
    const chance = (x) => formatPercent(x, 0);
    const signed = (text, value) => (value > 0 ? `+${text}` : text);
    return h(
      "div",
      { class: "card preview", id: "policy-preview-card" },
      h("h3", {}, `Preview: what saving would change over version ${p.basedOnVersion}`),
      changeList(p.changes),
      h(
        "p",
        { class: "preview-counts" },
        `${formatCount(p.redecidedPayments)} scheduled payments would be decided again`,
        p.rescheduledPayments === null
          ? "."
          : `; ${formatCount(p.rescheduledPayments)} of them would retry at other times.`
      ),
      p.modelId
        ? [
            h(
              "p",
              { class: "help" },
              `Forecast by the champion model over the ${formatCount(p.scoredPayments)} scheduled payments with the soonest retries.`
            ),
            stacked(table({
              caption: "Expected recoveries, per currency",
              columns: [
                { title: "Currency", render: (c) => c.currency },
                { title: "Payments", numeric: true, render: (c) => formatCount(c.payments) },
                { title: "Now", numeric: true, render: (c) => c.currentExpectedRecoveries.toFixed(1) },
                { title: "After", numeric: true, render: (c) => c.proposedExpectedRecoveries.toFixed(1) },
                {
                  title: "Recovered amount now → after",
                  numeric: true,
                  render: (c) =>
                    `${formatMoney(c.currentExpectedRecoveredAmount, c.currency)} → ${formatMoney(c.proposedExpectedRecoveredAmount, c.currency)}`,
                },
                {
                  title: "Change",
                  numeric: true,
                  render: (c) =>
                    signed(formatMoney(c.expectedRecoveredAmountChange, c.currency), c.expectedRecoveredAmountChange),
                },
              ],
              rows: p.currencies,
            })),
            p.payments.length
              ? h(
                  "details",
                  {},
                  h("summary", {}, `The ${p.payments.length} payments whose chance changes most`),
                  stacked(table({
                    caption: "Chance of recovery per payment",
                    columns: [
                      {
                        title: "Payment",
                        render: (x) =>
                          h(
                            "a",
                            { href: `#/m/${encodeURIComponent(merchantId)}/payments/${encodeURIComponent(x.paymentId)}` },
                            formatMoney(x.amount, x.currency)
                          ),
                      },
                      { title: "Now", numeric: true, render: (x) => chance(x.current.recoveryProbability) },
                      { title: "After", numeric: true, render: (x) => chance(x.proposed.recoveryProbability) },
                      {
                        title: "Next retry after the change",
                        render: (x) => formatDateTime(x.proposed.retryTimes[0], screen.timeZone),
                      },
                    ],
                    rows: p.payments,
                  }))
                )
              : null,
          ]
        : h("p", { class: "help" }, "No champion model is usable yet, so there is no forecast of recoveries.")
    );
  }

  // ---- saving ----

  async function save() {
    const { changes, problems } = pendingChanges();
    if (problems.length) return showFieldErrors(problems);
    clearFieldErrors();
    const fields = Object.keys(changes);
    if (!fields.length) {
      announce("Nothing to save: no setting differs from the current version.");
      return;
    }
    const base = valuesOf(state.base);
    const reason = await askReason(`Save the retry policy as version ${state.base.version + 1}`, {
      confirm: "Save",
      detail: fields
        .map((f) => `${fieldLabel(f)}: ${describeValue(f, base[f])} → ${describeValue(f, changes[f])}`)
        .join("; "),
    });
    if (!reason) return;
    saveButton.disabled = true;
    let payload = null;
    try {
      payload = await mutate(
        UPDATE_MUTATION,
        { input: { merchantId, expectedVersion: state.base.version, reason, ...changes } },
        "updateRetryPolicy"
      );
      const policy = await fetchPolicy();
      showPolicy(policy);
      discardEdits();
      announce(`Saved: the retry policy is at version ${payload.retryPolicy.version}.`, { tone: "success" });
    } catch (error) {
      if (payload) {
        // Saved; only reading the policy again failed (or the screen went meanwhile): the save
        // is said, and the edits, now saved, are not offered for saving again.
        const saved = `Saved: the retry policy is at version ${payload.retryPolicy.version}.`;
        if (error.name === "AbortError" || signal.aborted) announce(saved, { tone: "success" });
        else {
          discardEdits();
          announce(`${saved} It could not be read back (${error.message}): reload the page to see it.`, { tone: "success" });
        }
        return;
      }
      if (error.name === "AbortError") return;
      if (signal.aborted) {
        // The screen has gone: what its form would have shown is said instead.
        announce(`The policy was not saved: ${error.message}`, { tone: "error" });
        return;
      }
      if (error.code === "VERSION_CONFLICT") await conflict(changes);
      else if (error.code === "INVALID") showFieldErrors(error.errors.map((e) => [e.field, e.message]));
      else announce(`The policy was not saved: ${error.message}`, { tone: "error" });
    } finally {
      saveButton.disabled = false;
    }
  }

  // Someone saved a newer version since the form was loaded. The newer versions' changes come
  // from the history; the user's own edits stay in the form, on top of the newer version, so
  // saving again applies exactly them (and nothing the other person changed is undone).
  async function conflict(mine) {
    const seen = state.base.version;
    let policy;
    try {
      policy = await fetchPolicy();
    } catch (error) {
      if (error.name !== "AbortError") announce(`The policy changed meanwhile and could not be reloaded: ${error.message}`, { tone: "error" });
      return;
    }
    showPolicy(policy);
    const newer = state.history.filter((v) => v.version > seen).sort((a, b) => a.version - b.version);
    const theirs = new Map();
    for (const version of newer) {
      for (const change of version.changes) theirs.set(change.field, { version, change });
    }
    // Settings the user did not touch take the newer version's values.
    const values = valuesOf(policy);
    fill({ ...values, ...mine });
    state.base = policy;
    previewSlot.replaceChildren();
    delete previewSlot.dataset.for;

    for (const note of form.querySelectorAll(".other-change")) note.remove();
    for (const [name, { version, change }] of theirs) {
      const wrapper = form.querySelector(`[data-field="${name}"]`);
      if (!wrapper) continue;
      wrapper.classList.add("changed-by-other");
      const clash = name in mine && !same(mine[name], change.new);
      wrapper.append(
        h(
          "p",
          { class: "other-change" },
          `${version.actor} set this to ${describeValue(name, change.new)} in version ${version.version}.`,
          clash ? ` Your value ${describeValue(name, mine[name])} is kept here: check it before saving.` : ""
        )
      );
    }
    const clashes = [...theirs.keys()].filter((f) => f in mine && !same(mine[f], theirs.get(f).change.new));
    const remaining = differences(values, mine);
    conflictSlot.replaceChildren(
      h(
        "div",
        { class: "conflict", role: "alert", id: "policy-conflict-box" },
        h("h3", {}, "Not saved: someone else changed the policy while you were editing"),
        h(
          "p",
          {},
          `You were editing version ${seen}; the policy is now at version ${policy.version}. `,
          "Here is what changed meanwhile:"
        ),
        newer.length
          ? h(
              "ul",
              { class: "conflict-versions" },
              newer.map((v) =>
                h(
                  "li",
                  {},
                  h(
                    "strong",
                    {},
                    `Version ${v.version} by ${v.actor}, ${formatDateTime(v.createdAt, screen.timeZone)}`
                  ),
                  v.reason ? ` — “${v.reason}”` : "",
                  v.changes.length ? changeList(v.changes) : h("p", { class: "help" }, "No setting changed.")
                )
              )
            )
          : h("p", { class: "help" }, "The newer versions are beyond the history shown."),
        h(
          "p",
          {},
          Object.keys(remaining).length
            ? `Your edits are still in the form, now on top of version ${policy.version}: ` +
                Object.keys(remaining).map(fieldLabel).join(", ") +
                "."
            : "Your edits match the new version: there is nothing left to save.",
          clashes.length ? ` You both changed ${clashes.map(fieldLabel).join(", ")}: yours is kept in the form.` : ""
        ),
        h(
          "div",
          { class: "actions" },
          Object.keys(remaining).length
            ? [
                h("button", { type: "button", class: "secondary", onclick: () => preview() }, `Preview on version ${policy.version}`),
                h("button", { type: "button", onclick: () => save() }, `Save my edits on version ${policy.version}…`),
              ]
            : null,
          h("button", { type: "button", class: "link", onclick: () => discardEdits() }, "Discard my edits")
        )
      )
    );
    editsChanged();
    announce(`Not saved: version ${policy.version} was saved meanwhile. Your edits are kept.`, { tone: "error" });
    conflictSlot.querySelector("h3").tabIndex = -1;
    conflictSlot.querySelector("h3").focus();
  }

  // ---- history ----

  function showHistory(total) {
    const more = state.historyPage && state.historyPage.hasNextPage
      ? h(
          "button",
          {
            type: "button",
            class: "secondary",
            onclick: async (event) => {
              event.target.disabled = true;
              try {
                const data = await gql(
                  POLICY_QUERY,
                  { id: merchantId, first: HISTORY_PAGE, after: state.historyPage.endCursor },
                  { signal }
                );
                const page = data.merchant.retryPolicy.history;
                state.history.push(...page.edges.map((e) => e.node));
                state.historyPage = page.pageInfo;
                showHistory(page.totalCount);
              } catch (error) {
                if (error.name !== "AbortError") announce(error.message, { tone: "error" });
                event.target.disabled = false;
              }
            },
          },
          "Show older versions"
        )
      : null;
    historyBody.replaceChildren(
      stacked(table({
        caption: `Versions, newest first (${formatCount(state.history.length)} of ${formatCount(total)})`,
        columns: [
          { title: "Version", numeric: true, render: (v) => String(v.version) },
          { title: "When", render: (v) => formatDateTime(v.createdAt, screen.timeZone) },
          { title: "Who", render: (v) => v.actor },
          { title: "Why", render: (v) => v.reason || "—" },
          {
            title: "What changed",
            render: (v) => (v.changes.length ? changeList(v.changes) : h("span", { class: "help" }, "First version")),
          },
        ],
        rows: state.history,
        rowAttributes: (v) => ({ dataset: { version: v.version } }),
      })),
      ...(more ? [h("div", { class: "actions" }, more)] : [])
    );
  }

  return { element, historyElement, load };
}

// ---- processor connections ---------------------------------------------------------------

const CONNECTION_TONES = { ACTIVE: "good", PAUSED: "warn", ERROR: "bad", DISCONNECTED: null };

function connectionsSection(screen) {
  const { signal, merchantId } = screen;
  const body = h("div", {}, loading());
  const element = section(
    "connections",
    "Processor connections",
    h("p", { class: "help" }, "The processor accounts payments are read from. Pausing stops polling; sync asks for a poll now."),
    body
  );

  async function act(connection, name, verb, withReason) {
    let reason = null;
    if (withReason) {
      reason = await askReason(`${verb} ${connection.name}`, { confirm: verb });
      if (!reason) return;
    }
    const payload = await mutate(
      `mutation ($id: ID!${withReason ? ", $reason: String!" : ""}) {
        ${name}(id: $id${withReason ? ", reason: $reason" : ""}) {
          errors { code message field }
          processorConnection { ${CONNECTION_FIELDS} }
          ${name === "syncProcessorConnection" ? "queued" : ""}
        }
      }`,
      withReason ? { id: connection.id, reason } : { id: connection.id },
      name
    );
    if (name === "syncProcessorConnection") {
      announce(payload.queued ? `A poll of ${connection.name} is queued.` : `A poll of ${connection.name} was already queued.`, { tone: "success" });
    } else {
      announce(`${connection.name} is now ${label(payload.processorConnection.status).toLowerCase()}.`, { tone: "success" });
    }
    await load();
  }

  function actions(c) {
    if (c.status === "DISCONNECTED") return h("span", { class: "help" }, "Disconnected for good");
    const named = (verb) => `${verb} ${c.name}`;
    return h(
      "div",
      { class: "row-actions" },
      c.status === "PAUSED" || c.status === "ERROR"
        ? actionButton("Resume…", () => act(c, "resumeProcessorConnection", "Resume", true), { tone: "secondary", describe: named("Resume") })
        : actionButton("Pause…", () => act(c, "pauseProcessorConnection", "Pause", true), { tone: "secondary", describe: named("Pause") }),
      c.status === "ACTIVE"
        ? actionButton("Sync now", () => act(c, "syncProcessorConnection", "Sync", false), { tone: "secondary", describe: named("Sync now") })
        : null
    );
  }

  async function load() {
    try {
      const data = await gql(CONNECTIONS_QUERY, { id: merchantId }, { signal });
      const connections = data.merchant ? data.merchant.processorConnections : [];
      body.replaceChildren(
        stacked(table({
          caption: "Connections",
          empty: "No processor is connected yet.",
          columns: [
            { title: "Connection", render: (c) => h("span", {}, c.name, h("br"), h("span", { class: "help" }, label(c.kind))) },
            { title: "Status", render: (c) => h("span", {}, badge(label(c.status), CONNECTION_TONES[c.status]), c.lastError ? h("div", { class: "row-error" }, c.lastError) : null) },
            { title: "Last polled", render: (c) => formatDateTime(c.lastPolledAt, screen.timeZone) },
            { title: "Payments read", numeric: true, render: (c) => formatCount(c.paymentsIngested) },
            { title: "Dead letters", numeric: true, render: (c) => formatCount(c.deadLetters.totalCount) },
            { title: "Actions", render: actions },
          ],
          rows: connections,
          rowAttributes: (c) => ({ dataset: { connection: c.id } }),
        }))
      );
    } catch (error) {
      if (error.name === "AbortError") return;
      body.replaceChildren(errorBox(error, { retry: load }));
    }
  }

  return { element, load };
}

// ---- webhooks ----------------------------------------------------------------------------

const DELIVERY_TONES = { DELIVERED: "good", FAILED: "bad", PENDING: "warn" };
// While a delivery just sent is pending, its endpoint is read again this often (ms), this many times.
const WATCH_EVERY = 1500;
const WATCH_TIMES = 40;

function webhooksSection(screen) {
  const { signal, merchantId } = screen;
  const secretSlot = h("div", {});
  const urlInput = h("input", {
    id: "webhook-url",
    type: "url",
    required: true,
    placeholder: "https://example.com/hooks/recovery",
    autocomplete: "off",
    spellcheck: "false",
  });
  const createForm = h(
    "form",
    {
      class: "inline",
      id: "webhook-create",
      onsubmit: async (event) => {
        event.preventDefault();
        const button = createForm.querySelector("button[type=submit]");
        button.disabled = true;
        try {
          // Not the screen's signal: the secret, shown once, reaches the user even when they
          // have moved on meanwhile.
          const payload = await mutate(
            `mutation ($input: CreateWebhookEndpointInput!) {
              createWebhookEndpoint(input: $input) {
                errors { code message field }
                secret
                webhookEndpoint { id url }
              }
            }`,
            { input: { merchantId, url: urlInput.value.trim() } },
            "createWebhookEndpoint"
          );
          urlInput.value = "";
          showSecret(
            secretSlot,
            `Signing secret of ${payload.webhookEndpoint.url}`,
            payload.secret,
            "Shown once: your receiver checks each delivery's signature with it. It cannot be read again (rotate it to get a new one)."
          );
          announce("Endpoint added: it receives every event type.", { tone: "success" });
          await load();
        } catch (error) {
          announce(`The endpoint was not added: ${error.message}`, { tone: "error" });
        } finally {
          button.disabled = false;
        }
      },
    },
    h("div", { class: "field grow" }, h("label", { for: "webhook-url" }, "New endpoint URL"), urlInput),
    h("button", { type: "submit" }, "Add endpoint")
  );
  const list = h("div", { class: "endpoints" }, loading());
  const element = section(
    "webhooks",
    "Webhook endpoints",
    h("p", { class: "help" }, "Where this merchant's events are posted, each delivery signed and retried until it is accepted."),
    createForm,
    secretSlot,
    list
  );
  const watching = new Set();
  let eventTypes = [];

  async function load() {
    try {
      const data = await gql(WEBHOOKS_QUERY, { id: merchantId }, { signal });
      eventTypes = data.webhookEventTypes;
      const endpoints = data.merchant ? data.merchant.webhookEndpoints : [];
      list.replaceChildren(
        ...(endpoints.length
          ? endpoints.map((e) => endpointCard(e))
          : [h("p", { class: "empty" }, "No endpoint yet: add one above.")])
      );
    } catch (error) {
      if (error.name === "AbortError") return;
      list.replaceChildren(errorBox(error, { retry: load }));
    }
  }

  // Reads one endpoint again and replaces its card (keeps the rest of the page as it is).
  async function reload(id) {
    const data = await gql(ENDPOINT_QUERY, { id }, { signal });
    const old = list.querySelector(`[data-endpoint="${CSS.escape(id)}"]`);
    if (!data.node) {
      if (old) old.remove();
      return null;
    }
    const card = endpointCard(data.node);
    if (old) old.replaceWith(card);
    return data.node;
  }

  // Reads the endpoint again until the delivery `deliveryId` is no longer pending (it goes out
  // within seconds), so the user sees it delivered or failed without reloading.
  async function watch(endpointId, deliveryId) {
    if (watching.has(deliveryId)) return;
    watching.add(deliveryId);
    try {
      for (let i = 0; i < WATCH_TIMES && !signal.aborted; i += 1) {
        await new Promise((resolve) => window.setTimeout(resolve, WATCH_EVERY));
        if (signal.aborted) return;
        const endpoint = await reload(endpointId);
        const delivery = endpoint && endpoint.recentDeliveries.find((d) => d.id === deliveryId);
        if (!delivery || delivery.status !== "PENDING" || delivery.attempts > 0) {
          if (delivery) {
            announce(
              `${delivery.eventType} delivery ${label(delivery.status).toLowerCase()}` +
                (delivery.lastStatusCode ? ` (HTTP ${delivery.lastStatusCode})` : "") +
                ".",
              { tone: delivery.status === "FAILED" ? "error" : "success" }
            );
          }
          return;
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") announce(error.message, { tone: "error" });
    } finally {
      watching.delete(deliveryId);
    }
  }

  function endpointCard(endpoint) {
    const sendTest = actionButton("Send test", async () => {
      const payload = await mutate(
        `mutation ($id: ID!) {
          sendTestWebhook(endpointId: $id) {
            errors { code message field }
            delivery { id }
          }
        }`,
        { id: endpoint.id },
        "sendTestWebhook"
      );
      announce("Test event (ping) queued.", { tone: "success" });
      await reload(endpoint.id);
      watch(endpoint.id, payload.delivery.id);
    }, { tone: "secondary", describe: `Send test to ${endpoint.url}` });

    const toggle = actionButton(endpoint.enabled ? "Disable…" : "Enable…", async () => {
      const verb = endpoint.enabled ? "Disable" : "Enable";
      const reason = await askReason(`${verb} ${endpoint.url}`, {
        confirm: verb,
        detail: endpoint.enabled ? "A disabled endpoint receives no new events." : null,
      });
      if (!reason) return;
      await mutate(
        `mutation ($input: SetWebhookEndpointEnabledInput!) {
          setWebhookEndpointEnabled(input: $input) { errors { code message field } webhookEndpoint { id enabled } }
        }`,
        { input: { endpointId: endpoint.id, enabled: !endpoint.enabled, reason } },
        "setWebhookEndpointEnabled"
      );
      announce(`${endpoint.url} ${endpoint.enabled ? "disabled" : "enabled"}.`, { tone: "success" });
      await reload(endpoint.id);
    }, { tone: "secondary", describe: `${endpoint.enabled ? "Disable" : "Enable"} ${endpoint.url}` });

    const rotate = actionButton("Rotate secret…", async () => {
      const reason = await askReason(`Replace the signing secret of ${endpoint.url}`, {
        confirm: "Rotate",
        detail: "The new secret is shown once; the old one keeps signing deliveries too for 24 hours, while the receiver switches.",
      });
      if (!reason) return;
      // Not the screen's signal: the new secret, shown once, is never dropped.
      const payload = await mutate(
        `mutation ($input: RotateWebhookSecretInput!) {
          rotateWebhookSecret(input: $input) { errors { code message field } secret webhookEndpoint { id } }
        }`,
        { input: { endpointId: endpoint.id, reason } },
        "rotateWebhookSecret"
      );
      showSecret(
        secretSlot,
        `New signing secret of ${endpoint.url}`,
        payload.secret,
        "Shown once. Deliveries are signed with both secrets until the old one expires."
      );
      announce(`The signing secret of ${endpoint.url} was replaced.`, { tone: "success" });
      await reload(endpoint.id);
      secretSlot.scrollIntoView({ block: "nearest" });
    }, { tone: "secondary", describe: `Rotate secret of ${endpoint.url}` });

    const remove = actionButton("Delete…", async () => {
      const reason = await askReason(`Delete ${endpoint.url}`, {
        confirm: "Delete",
        detail: "Its secrets and delivery history go with it; pending deliveries are never tried again.",
      });
      if (!reason) return;
      await mutate(
        `mutation ($input: DeleteWebhookEndpointInput!) {
          deleteWebhookEndpoint(input: $input) { errors { code message field } deletedWebhookEndpointId }
        }`,
        { input: { endpointId: endpoint.id, reason } },
        "deleteWebhookEndpoint"
      );
      announce(`${endpoint.url} deleted.`, { tone: "success" });
      await load();
    }, { tone: "danger", describe: `Delete ${endpoint.url}` });

    // Which event types it receives: every one, or those ticked.
    const typesId = `types-${endpoint.id.replace(/[^\w-]/g, "")}`;
    const everyType = h("input", { type: "radio", name: typesId, id: `${typesId}-all`, value: "all", checked: !endpoint.eventTypes });
    const someTypes = h("input", { type: "radio", name: typesId, id: `${typesId}-some`, value: "some", checked: Boolean(endpoint.eventTypes) });
    const typeBoxes = eventTypes.map((t) =>
      h("input", {
        type: "checkbox",
        id: `${typesId}-${t.type}`,
        value: t.type,
        checked: Boolean(endpoint.eventTypes && endpoint.eventTypes.includes(t.type)),
        onchange: () => {
          someTypes.checked = true;
        },
      })
    );
    const typesForm = h(
      "details",
      { class: "event-types" },
      h("summary", {}, "Event types"),
      h(
        "form",
        {
          onsubmit: async (event) => {
            event.preventDefault();
            const picked = typeBoxes.filter((b) => b.checked).map((b) => b.value);
            if (someTypes.checked && !picked.length) {
              announce("Tick at least one event type, or choose every type.", { tone: "error" });
              return;
            }
            const wanted = everyType.checked ? null : picked;
            const reason = await askReason(`Change the event types sent to ${endpoint.url}`, {
              confirm: "Change",
              detail: wanted ? `Only: ${wanted.join(", ")}.` : "Every event type.",
            });
            if (!reason) return;
            try {
              await mutate(
                `mutation ($input: UpdateWebhookEndpointInput!) {
                  updateWebhookEndpoint(input: $input) { errors { code message field } webhookEndpoint { id eventTypes } }
                }`,
                { input: { endpointId: endpoint.id, eventTypes: wanted, reason } },
                "updateWebhookEndpoint"
              );
              announce(`${endpoint.url} now receives ${wanted ? wanted.join(", ") : "every event type"}.`, { tone: "success" });
              await reload(endpoint.id);
            } catch (error) {
              if (error.name !== "AbortError") announce(`The event types were not changed: ${error.message}`, { tone: "error" });
            }
          },
        },
        h("div", { class: "checkbox" }, everyType, h("label", { for: `${typesId}-all` }, "Every event type")),
        h("div", { class: "checkbox" }, someTypes, h("label", { for: `${typesId}-some` }, "Only these:")),
        h(
          "div",
          { class: "category-grid" },
          eventTypes.map((t, i) =>
            h("div", { class: "checkbox", title: t.description }, typeBoxes[i], h("label", { for: typeBoxes[i].id }, t.type))
          )
        ),
        h("div", { class: "actions" }, h("button", { type: "submit", class: "secondary" }, "Save event types…"))
      )
    );

    const redeliver = (delivery) =>
      actionButton("Redeliver…", async () => {
        const reason = await askReason(`Send this ${delivery.eventType} event again`, {
          confirm: "Redeliver",
          detail: `To ${endpoint.url}, as a new delivery.`,
        });
        if (!reason) return;
        const payload = await mutate(
          `mutation ($id: ID!, $reason: String!) {
            redeliverWebhook(deliveryId: $id, reason: $reason) { errors { code message field } delivery { id } }
          }`,
          { id: delivery.id, reason },
          "redeliverWebhook"
        );
        announce(`${delivery.eventType} queued again.`, { tone: "success" });
        await reload(endpoint.id);
        watch(endpoint.id, payload.delivery.id);
      }, { tone: "secondary", describe: `Redeliver ${delivery.eventType} of ${formatDateTime(delivery.createdAt, screen.timeZone)}` });

    return h(
      "article",
      { class: "card endpoint", dataset: { endpoint: endpoint.id } },
      h(
        "div",
        { class: "endpoint-head" },
        h("h3", { class: "endpoint-url" }, endpoint.url),
        endpoint.enabled ? badge("Enabled", "good") : badge("Disabled", "warn")
      ),
      h(
        "p",
        { class: "help" },
        endpoint.eventTypes ? `Receives: ${endpoint.eventTypes.join(", ")}.` : "Receives every event type.",
        ` Added ${formatDateTime(endpoint.createdAt, screen.timeZone)}.`,
        endpoint.previousSecretExpiresAt
          ? ` The previous secret still signs until ${formatDateTime(endpoint.previousSecretExpiresAt, screen.timeZone)}.`
          : ""
      ),
      h("div", { class: "actions" }, sendTest, toggle, rotate, remove),
      typesForm,
      stacked(table({
        caption: `Recent deliveries to ${endpoint.url}`,
        empty: "No delivery yet: send a test to try the endpoint.",
        columns: [
          { title: "Event", render: (d) => h("span", {}, d.eventType, d.redeliveryOf ? h("span", { class: "help" }, " (redelivery)") : null) },
          { title: "Created", render: (d) => formatDateTime(d.createdAt, screen.timeZone) },
          { title: "Status", render: (d) => badge(label(d.status), DELIVERY_TONES[d.status]) },
          { title: "Attempts", numeric: true, render: (d) => formatCount(d.attempts) },
          {
            title: "Last answer",
            render: (d) =>
              d.lastStatusCode || d.lastError
                ? h("span", {}, d.lastStatusCode ? `HTTP ${d.lastStatusCode}` : "", d.lastError ? h("span", { class: "row-error" }, ` ${d.lastError}`) : null)
                : "—",
          },
          {
            title: "Delivered / next try",
            render: (d) =>
              d.deliveredAt
                ? formatDateTime(d.deliveredAt, screen.timeZone)
                : d.nextAttemptAt
                  ? `next ${formatDateTime(d.nextAttemptAt, screen.timeZone)}`
                  : "—",
          },
          { title: "", render: (d) => (d.status === "PENDING" ? null : redeliver(d)) },
        ],
        rows: endpoint.recentDeliveries,
        rowAttributes: (d) => ({ dataset: { delivery: d.id, status: d.status } }),
      }))
    );
  }

  return { element, load };
}

// ---- API keys ----------------------------------------------------------------------------

const EXPIRIES = [
  ["", "Never"],
  ["7", "In 7 days"],
  ["30", "In 30 days"],
  ["90", "In 90 days"],
  ["365", "In a year"],
];

function keysSection(screen) {
  const { signal, merchantId, role } = screen;
  const mayCreate = role === "SUPPORT" || role === "MERCHANT";
  const mayRevoke = role === "SUPPORT" || role === "MERCHANT";
  const state = { keys: [], page: null, total: 0, onlyThisMerchant: true };
  const body = h("div", {}, loading());
  const tokenSlot = h("div", {});

  const nameInput = h("input", { id: "key-name", type: "text", required: true, maxlength: 100, autocomplete: "off" });
  const roleSelect = h(
    "select",
    { id: "key-role" },
    h("option", { value: "MERCHANT" }, "Merchant (this merchant only)"),
    role === "SUPPORT" ? h("option", { value: "PARTNER" }, "Partner (granted this merchant)") : null
  );
  const scopeRead = h("input", { id: "key-scope-read", type: "checkbox", checked: true, value: "READ" });
  const scopeWrite = h("input", { id: "key-scope-write", type: "checkbox", checked: true, value: "WRITE" });
  const expirySelect = h("select", { id: "key-expiry" }, EXPIRIES.map(([v, t]) => h("option", { value: v }, t)));

  const createForm = mayCreate
    ? h(
        "form",
        {
          class: "inline",
          id: "key-create",
          onsubmit: async (event) => {
            event.preventDefault();
            const scopes = [scopeRead, scopeWrite].filter((i) => i.checked).map((i) => i.value);
            if (!nameInput.value.trim()) {
              announce("Name the key (who or what uses it).", { tone: "error" });
              nameInput.focus();
              return;
            }
            if (!scopes.length) {
              announce("A key needs at least one scope.", { tone: "error" });
              return;
            }
            const button = createForm.querySelector("button[type=submit]");
            button.disabled = true;
            const keyName = nameInput.value.trim();
            // Said at once: the answer may take a while on a busy portal, and a click that
            // seems to do nothing gets clicked again or given up on.
            announce(`Creating the key ${keyName}…`);
            // Neither request takes the screen's signal: once sent, the portal creates the key
            // whether or not this screen is still showing, and its token (shown once) must
            // reach the user; leaving or redrawing the screen does not cancel the action.
            try {
              let expiresAt = null;
              if (expirySelect.value) {
                // The portal's clock decides when a key expires (the demo's runs faster).
                const { serverTime } = await gql("{ serverTime }");
                expiresAt = new Date(new Date(serverTime).getTime() + Number(expirySelect.value) * 86400000).toISOString();
              }
              const payload = await mutate(
                `mutation ($input: CreateApiKeyInput!) {
                  createApiKey(input: $input) { errors { code message field } token apiKey { id name } }
                }`,
                {
                  input: {
                    name: keyName,
                    role: roleSelect.value,
                    scopes,
                    merchantIds: [merchantId],
                    expiresAt,
                  },
                },
                "createApiKey"
              );
              if (nameInput.value.trim() === keyName) nameInput.value = "";
              showSecret(
                tokenSlot,
                `Token of the key ${payload.apiKey.name}`,
                payload.token,
                "Shown once: the portal keeps only its hash. Store it where its user keeps secrets."
              );
              announce(`Key ${payload.apiKey.name} created.`, { tone: "success" });
            } catch (error) {
              announce(`The key ${keyName} was not created: ${error.message}`, { tone: "error" });
              return;
            } finally {
              button.disabled = false;
            }
            // The list is the screen's: it is not read for a screen that has gone.
            if (!signal.aborted) await load();
          },
        },
        h("div", { class: "field" }, h("label", { for: "key-name" }, "Key name"), nameInput),
        h("div", { class: "field" }, h("label", { for: "key-role" }, "Role"), roleSelect),
        h(
          "fieldset",
          { class: "field scopes" },
          h("legend", {}, "Scopes"),
          h(
            "div",
            { class: "scope-options" },
            h("span", { class: "checkbox" }, scopeRead, h("label", { for: "key-scope-read" }, "Read")),
            h("span", { class: "checkbox" }, scopeWrite, h("label", { for: "key-scope-write" }, "Write"))
          )
        ),
        h("div", { class: "field" }, h("label", { for: "key-expiry" }, "Expires"), expirySelect),
        h("button", { type: "submit" }, "Create key")
      )
    : h("p", { class: "help" }, "Support or the merchant's own key creates keys.");

  const filter =
    role === "SUPPORT"
      ? h(
          "div",
          { class: "checkbox" },
          h("input", {
            id: "keys-this-merchant",
            type: "checkbox",
            checked: true,
            onchange: (event) => {
              state.onlyThisMerchant = event.target.checked;
              show();
            },
          }),
          h("label", { for: "keys-this-merchant" }, "Only keys granted this merchant")
        )
      : null;

  const element = section("api-keys", "API keys", createForm, tokenSlot, filter, body);

  function status(key, now) {
    if (key.revokedAt) return badge(`Revoked ${formatDateTime(key.revokedAt, screen.timeZone)}`, "bad");
    if (key.expiresAt && new Date(key.expiresAt) <= now) return badge("Expired", "warn");
    return badge("Active", "good");
  }

  // The key this tab signed in with: revoking it signs the dashboard out too.
  const isOwn = (key) => Boolean(apiKey() && apiKey().startsWith(key.prefix));

  function revokeButton(key) {
    return actionButton("Revoke…", async () => {
      const reason = await askReason(`Revoke the key ${key.name}`, {
        confirm: "Revoke",
        detail:
          `Requests with ${key.prefix}… are refused within seconds. This cannot be undone.` +
          (isOwn(key) ? " It is the key this dashboard is signed in with: you will be signed out." : ""),
      });
      if (!reason) return;
      await mutate(
        `mutation ($id: ID!, $reason: String!) {
          revokeApiKey(id: $id, reason: $reason) { errors { code message field } apiKey { id revokedAt } }
        }`,
        { id: key.id, reason },
        "revokeApiKey"
      );
      announce(`Key ${key.name} revoked.`, { tone: "success" });
      await load();
    }, { tone: "danger", describe: `Revoke ${key.name}` });
  }

  function show() {
    const now = state.now || new Date();
    const rows = state.onlyThisMerchant && role === "SUPPORT"
      ? state.keys.filter((k) => k.merchants.some((m) => m.id === merchantId))
      : state.keys;
    body.replaceChildren(
      stacked(table({
        caption: `Keys, newest first (${formatCount(rows.length)} shown of ${formatCount(state.total)} this key can see)`,
        empty: "No key to show.",
        columns: [
          {
            title: "Name",
            render: (k) =>
              h(
                "span",
                {},
                k.name,
                isOwn(k) ? h("span", { class: "help" }, " (this dashboard's key)") : null,
                h("br"),
                h("code", { class: "help" }, `${k.prefix}…`)
              ),
          },
          { title: "Role", render: (k) => label(k.role) },
          { title: "Scopes", render: (k) => k.scopes.map(label).join(", ") },
          ...(role === "MERCHANT" ? [] : [{ title: "Merchants", render: (k) => (k.merchants.length ? k.merchants.map((m) => m.name).join(", ") : "all") }]),
          { title: "Created", render: (k) => formatDateTime(k.createdAt, screen.timeZone) },
          { title: "Expires", render: (k) => (k.expiresAt ? formatDateTime(k.expiresAt, screen.timeZone) : "never") },
          { title: "Last used", render: (k) => (k.lastUsedAt ? formatDateTime(k.lastUsedAt, screen.timeZone) : "not yet") },
          { title: "Status", render: (k) => status(k, now) },
          ...(mayRevoke ? [{ title: "", render: (k) => (k.revokedAt ? null : revokeButton(k)) }] : []),
        ],
        rows,
        rowAttributes: (k) => ({ dataset: { key: k.id } }),
      })),
      ...(state.page && state.page.hasNextPage
        ? [h("div", { class: "actions" }, actionButton("Show older keys", () => load({ more: true }), { tone: "secondary" }))]
        : [])
    );
  }

  async function load({ more = false } = {}) {
    try {
      const data = await gql(
        KEYS_QUERY,
        { first: KEYS_PAGE, after: more && state.page ? state.page.endCursor : null },
        { signal }
      );
      const keys = data.apiKeys.edges.map((e) => e.node);
      state.keys = more ? [...state.keys, ...keys] : keys;
      state.page = data.apiKeys.pageInfo;
      state.total = data.apiKeys.totalCount;
      state.now = new Date(data.serverTime);
      show();
    } catch (error) {
      if (error.name === "AbortError") return;
      body.replaceChildren(errorBox(error, { retry: () => load() }));
    }
  }

  return { element, load };
}

