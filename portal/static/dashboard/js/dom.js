// Building the page: elements from data, never HTML from strings (the data shown comes from
// merchants' customers and processors, so none of it is ever parsed as markup).

// h("a", {href: "#/x", class: "link"}, "text", child, [more, children]).
// Attributes starting with "on" take listeners; `dataset`, `aria` take objects; false/null
// attributes and children are skipped.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name === "class") {
      element.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    } else if (name === "value" && "value" in element) {
      element.value = value;
    } else if (name === "checked" || name === "selected" || name === "disabled") {
      element[name] = Boolean(value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// SVG elements (charts).
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

// Said to screen readers (and shown) in the page's status line.
export function announce(message, { tone = "info" } = {}) {
  const region = document.getElementById("status");
  if (!region) return;
  region.dataset.tone = tone;
  region.textContent = message;
}

// ---- formats -----------------------------------------------------------------------------

const moneyFormats = new Map();

function moneyFormat(currency) {
  if (!moneyFormats.has(currency)) {
    let format;
    try {
      format = new Intl.NumberFormat(undefined, { style: "currency", currency });
    } catch {
      format = null; // a currency code the browser does not know: shown as "1234 XYZ minor"
    }
    moneyFormats.set(currency, format);
  }
  return moneyFormats.get(currency);
}

// Integer minor units of `currency` as the user reads them (2666 EUR -> "€26.66"). The
// currency's exponent comes from the browser's own tables (JPY 0, EUR 2, KWD 3).
export function formatMoney(minor, currency) {
  if (minor === null || minor === undefined) return "—";
  const format = moneyFormat(currency);
  if (!format) return `${minor} ${currency} (minor units)`;
  const digits = format.resolvedOptions().maximumFractionDigits;
  return format.format(Number(minor) / 10 ** digits);
}

export function formatCount(value) {
  if (value === null || value === undefined) return "—";
  return new Intl.NumberFormat().format(value);
}

// A rate in [0, 1] as a percentage; null ("no data") as a dash.
export function formatPercent(value, digits = 1) {
  if (value === null || value === undefined) return "—";
  return `${(value * 100).toFixed(digits)}%`;
}

export function formatNumber(value, digits = 2) {
  if (value === null || value === undefined) return "—";
  return Number(value).toFixed(digits);
}

const dateTimeFormats = new Map();

// An instant in `timeZone` (the merchant's), with the zone's name so nobody guesses.
export function formatDateTime(iso, timeZone) {
  if (!iso) return "—";
  const key = timeZone || "";
  if (!dateTimeFormats.has(key)) {
    dateTimeFormats.set(
      key,
      // Spelled out: `dateStyle`/`timeStyle` cannot be combined with `timeZoneName`.
      new Intl.DateTimeFormat(undefined, {
        year: "numeric",
        month: "short",
        day: "numeric",
        hour: "2-digit",
        minute: "2-digit",
        timeZone: timeZone || undefined,
        timeZoneName: "short",
      })
    );
  }
  return dateTimeFormats.get(key).format(new Date(iso));
}

export function formatDate(iso, timeZone) {
  if (!iso) return "—";
  return new Intl.DateTimeFormat(undefined, {
    month: "short",
    day: "numeric",
    timeZone: timeZone || undefined,
  }).format(new Date(iso));
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

// INSUFFICIENT_FUNDS -> "Insufficient funds".
export function label(enumValue) {
  if (!enumValue) return "—";
  const words = String(enumValue).toLowerCase().replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// ---- common pieces -----------------------------------------------------------------------

export function loading(text = "Loading…") {
  return h("p", { class: "loading", role: "status" }, text);
}

// An error as the user should read it: what failed and, where the API says, why.
export function errorBox(error, { retry } = {}) {
  const code = error && error.code ? error.code : null;
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, code === "FORBIDDEN" || code === "NOT_FOUND" ? "Not available" : "Error"),
    " ",
    error && error.message ? error.message : String(error),
    code ? h("span", { class: "code" }, ` (${code})`) : null,
    retry ? h("button", { type: "button", class: "link", onclick: retry }, "Retry") : null
  );
}

// A table with a caption (for screen readers) and header cells; `columns` are
// {title, render(row) -> node|string, numeric?}.
export function table({ caption, columns, rows, empty = "Nothing to show.", rowAttributes }) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          columns.map((c) => h("th", { scope: "col", class: c.numeric ? "num" : null }, c.title))
        )
      ),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            rowAttributes ? rowAttributes(row) : {},
            columns.map((c) => h("td", { class: c.numeric ? "num" : null }, c.render(row)))
          )
        )
      )
    )
  );
}

export function badge(text, tone) {
  return h("span", { class: "badge", dataset: tone ? { tone } : {} }, text);
}

// A titled section of a screen (settings, support), named by its heading.
export function section(id, title, ...children) {
  return h(
    "section",
    { class: "settings-section", id, "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, title),
    ...children
  );
}

// A labelled figure ("Recovery rate  42.0%").
export function figure(title, value, note) {
  return h(
    "div",
    { class: "figure" },
    h("div", { class: "figure-title" }, title),
    h("div", { class: "figure-value" }, value),
    note ? h("div", { class: "figure-note" }, note) : null
  );
}

// A native <dialog> asking for a reason (every change the API audits needs one). Resolves
// to the text, or null when cancelled.
export function askReason(title, { confirm = "Confirm", detail } = {}) {
  return new Promise((resolve) => {
    const input = h("textarea", { id: "reason-input", required: true, rows: 3, maxlength: 500 });
    const dialog = h(
      "dialog",
      { class: "dialog", "aria-labelledby": "reason-title" },
      h(
        "form",
        { method: "dialog" },
        h("h2", { id: "reason-title" }, title),
        detail ? h("p", {}, detail) : null,
        h("label", { for: "reason-input" }, "Reason (kept in the audit log)"),
        input,
        h(
          "div",
          { class: "actions" },
          h("button", { type: "button", value: "cancel", class: "secondary" }, "Cancel"),
          h("button", { type: "submit", value: "ok" }, confirm)
        )
      )
    );
    const cancel = dialog.querySelector("button[value=cancel]");
    cancel.addEventListener("click", () => dialog.close("cancel"));
    dialog.addEventListener("close", () => {
      const text = input.value.trim();
      dialog.remove();
      resolve(dialog.returnValue === "ok" && text ? text : null);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

// Lets a table made by `table()` read as one block per row on a phone: each cell carries its
// column's title, which app.css shows before the value on narrow screens (`table.stacked`).
export function stacked(node) {
  const found = node.matches && node.matches("table") ? node : node.querySelector && node.querySelector("table");
  if (!found) return node;
  const titles = [...found.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const row of found.querySelectorAll("tbody tr")) {
    [...row.children].forEach((cell, i) => {
      if (titles[i]) cell.dataset.label = titles[i];
    });
  }
  found.classList.add("stacked");
  return node;
}
