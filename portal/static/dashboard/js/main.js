// The dashboard's shell: the key, who the viewer is, the merchant switcher, the navigation and
// the fragment router that hands each screen its part of the page.
//
// Routes (after "#"):
//   /m/<merchant id>/overview             recovery over time, breakdowns, uplift
//   /m/<merchant id>/payments?<filters>   the payments list
//   /m/<merchant id>/payments/<payment id>
//   /m/<merchant id>/settings             retry policy, connections, webhooks, keys
//   /support                              support staff: bulk actions, dead letters
// The fragment never reaches the server, so the key link `#key=<key>` that `portal demo`
// prints stays in the browser; it is moved to session storage and taken out of the address.

import { apiKey, forgetApiKey, gql, onKeyRefused, setApiKey } from "./api.js";
import { announce, clear, errorBox, h, loading } from "./dom.js";

const SCREENS = {
  overview: { title: "Overview", load: () => import("./screens/overview.js") },
  payments: { title: "Payments", load: () => import("./screens/payments.js") },
  payment: { title: "Payment", load: () => import("./screens/payment.js") },
  settings: { title: "Settings", load: () => import("./screens/settings.js") },
  support: { title: "Support", load: () => import("./screens/support.js") },
};

const MERCHANT_KEY = "portal.merchantId";
const VIEWER_QUERY = `
  query DashboardViewer {
    viewer {
      role
      name
      merchants(first: 100) {
        totalCount
        edges { node { id name status } }
      }
    }
  }
`;

const state = {
  viewer: null,
  merchants: [],
  // Ends the current screen's work (requests, subscriptions) when the route changes.
  screen: null,
};

function takeKeyFromAddress() {
  const match = /^#key=([^&]+)(?:&(.*))?$/.exec(window.location.hash);
  if (!match) return;
  setApiKey(decodeURIComponent(match[1]));
  const rest = match[2] ? `#${decodeURIComponent(match[2])}` : "#/";
  window.history.replaceState(null, "", `${window.location.pathname}${rest}`);
}

export function parseRoute(hash = window.location.hash) {
  const raw = hash.replace(/^#/, "") || "/";
  const [path, queryString = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(queryString);
  if (parts[0] === "support") return { screen: "support", merchantId: null, args: [], query };
  if (parts[0] === "m" && parts[1]) {
    const section = parts[2] || "overview";
    if (section === "payments" && parts[3]) {
      return { screen: "payment", merchantId: parts[1], args: [parts[3]], query };
    }
    return { screen: section, merchantId: parts[1], args: parts.slice(3), query };
  }
  return { screen: null, merchantId: null, args: [], query };
}

export function merchantPath(merchantId, section = "overview", query) {
  const base = `#/m/${encodeURIComponent(merchantId)}/${section}`;
  const text = query ? new URLSearchParams(query).toString() : "";
  return text ? `${base}?${text}` : base;
}

export function navigate(hash, { replace = false } = {}) {
  if (replace) {
    window.history.replaceState(null, "", hash);
    route();
  } else {
    window.location.hash = hash;
  }
}

function keyForm(message) {
  const main = document.getElementById("main");
  clear(main);
  document.getElementById("nav").hidden = true;
  const input = h("input", {
    id: "api-key",
    type: "password",
    autocomplete: "off",
    required: true,
    spellcheck: "false",
    "aria-describedby": "api-key-help",
  });
  const form = h(
    "form",
    {
      class: "key-form card",
      onsubmit: (event) => {
        event.preventDefault();
        setApiKey(input.value.trim());
        start();
      },
    },
    h("h1", {}, "Sign in with an API key"),
    message ? errorBox(message) : null,
    h("label", { for: "api-key" }, "API key"),
    input,
    h(
      "p",
      { id: "api-key-help", class: "help" },
      "A merchant, partner or support key. It is kept in this browser tab only and sent " +
        "to this portal's API with each request."
    ),
    h("button", { type: "submit" }, "Open the dashboard")
  );
  main.append(form);
  input.focus();
}

function renderNav(current) {
  const nav = document.getElementById("nav");
  nav.hidden = false;
  clear(nav);
  const merchantId = current.merchantId || window.sessionStorage.getItem(MERCHANT_KEY);
  const links = [];
  if (merchantId) {
    for (const [section, title] of [
      ["overview", "Overview"],
      ["payments", "Payments"],
      ["settings", "Settings"],
    ]) {
      const active =
        current.screen === section || (section === "payments" && current.screen === "payment");
      links.push(
        h(
          "a",
          { href: merchantPath(merchantId, section), "aria-current": active ? "page" : null },
          title
        )
      );
    }
  }
  if (state.viewer.role === "SUPPORT") {
    links.push(
      h(
        "a",
        { href: "#/support", "aria-current": current.screen === "support" ? "page" : null },
        "Support"
      )
    );
  }
  nav.append(h("ul", {}, links.map((link) => h("li", {}, link))));
  nav.append(merchantSwitcher(current, merchantId));
  nav.append(
    h(
      "div",
      { class: "who" },
      h("span", {}, `${state.viewer.name} · ${state.viewer.role.toLowerCase()}`),
      h(
        "button",
        {
          type: "button",
          class: "link",
          onclick: () => {
            forgetApiKey();
            window.sessionStorage.removeItem(MERCHANT_KEY);
            window.location.hash = "#/";
            keyForm();
          },
        },
        "Sign out"
      )
    )
  );
}

function merchantSwitcher(current, merchantId) {
  if (state.merchants.length <= 1 && state.viewer.role === "MERCHANT") {
    const only = state.merchants[0];
    return h("div", { class: "merchant-name" }, only ? only.name : "");
  }
  const select = h(
    "select",
    {
      id: "merchant-switcher",
      onchange: (event) => {
        const section =
          current.screen && !["support", "payment"].includes(current.screen)
            ? current.screen
            : "overview";
        navigate(merchantPath(event.target.value, section));
      },
    },
    merchantId ? null : h("option", { value: "", selected: true }, "Choose a merchant"),
    state.merchants.map((m) =>
      h(
        "option",
        { value: m.id, selected: m.id === merchantId },
        m.status === "ACTIVE" ? m.name : `${m.name} (${m.status.toLowerCase()})`
      )
    )
  );
  return h(
    "div",
    { class: "switcher" },
    h("label", { for: "merchant-switcher" }, "Merchant"),
    select
  );
}

async function route() {
  if (!state.viewer) return;
  const current = parseRoute();
  if (state.screen) state.screen.abort();
  const controller = new AbortController();
  state.screen = controller;

  if (!current.screen) {
    const remembered = window.sessionStorage.getItem(MERCHANT_KEY);
    const first = state.merchants.find((m) => m.id === remembered) || state.merchants[0];
    if (first) navigate(merchantPath(first.id), { replace: true });
    else if (state.viewer.role === "SUPPORT") navigate("#/support", { replace: true });
    else showMessage("This key has no merchants to show yet.");
    return;
  }
  const spec = SCREENS[current.screen];
  if (!spec) {
    showMessage(`There is no screen "${current.screen}".`);
    return;
  }
  if (current.merchantId) window.sessionStorage.setItem(MERCHANT_KEY, current.merchantId);
  renderNav(current);
  const merchant =
    state.merchants.find((m) => m.id === current.merchantId) ||
    (current.merchantId ? { id: current.merchantId, name: "" } : null);
  const main = clear(document.getElementById("main"));
  main.append(loading());
  announce("");
  // Where focus was when the navigation started: if the user moves on while the screen
  // loads, the screen's heading does not take focus back from them.
  const focusedBefore = document.activeElement;
  document.title = `${spec.title}${merchant && merchant.name ? ` · ${merchant.name}` : ""} · Recovery portal`;
  try {
    const module = await spec.load();
    if (controller.signal.aborted) return;
    clear(main);
    await module.render(main, {
      viewer: state.viewer,
      merchants: state.merchants,
      merchant,
      args: current.args,
      query: current.query,
      signal: controller.signal,
      navigate,
      merchantPath,
    });
    const heading = main.querySelector("h1");
    const unmoved = [focusedBefore, document.body, null].includes(document.activeElement);
    if (heading && unmoved) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
  } catch (error) {
    if (controller.signal.aborted || error.name === "AbortError") return;
    clear(main).append(errorBox(error, { retry: route }));
  }
}

function showMessage(text) {
  clear(document.getElementById("main")).append(h("p", { class: "empty" }, text));
}

async function start() {
  const main = clear(document.getElementById("main"));
  if (!apiKey()) {
    keyForm();
    return;
  }
  main.append(loading("Signing in…"));
  try {
    const data = await gql(VIEWER_QUERY);
    state.viewer = data.viewer;
    state.merchants = data.viewer.merchants.edges.map((edge) => edge.node);
  } catch (error) {
    state.viewer = null;
    if (error.code === "UNAUTHENTICATED") {
      forgetApiKey();
      keyForm(error);
    } else {
      clear(main).append(errorBox(error, { retry: start }));
    }
    return;
  }
  route();
}

onKeyRefused(() => {
  forgetApiKey();
  state.viewer = null;
  keyForm({ message: "The API key was refused (unknown, revoked or expired).", code: "UNAUTHENTICATED" });
});

window.addEventListener("hashchange", () => {
  if (/^#key=/.test(window.location.hash)) {
    takeKeyFromAddress();
    start();
  } else {
    route();
  }
});

// Refreshes the viewer's merchants (after creating one, pausing one, ...).
export async function reloadMerchants() {
  const data = await gql(VIEWER_QUERY);
  state.viewer = data.viewer;
  state.merchants = data.viewer.merchants.edges.map((edge) => edge.node);
  renderNav(parseRoute());
}

announce("");
takeKeyFromAddress();
start();
