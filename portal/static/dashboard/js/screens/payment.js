// Payment detail: what failed (amount, customer, card, decline), every attempt with its card
// and decline, the timeline of state changes, the latest retry decision and its plain-words
// explanation, the card-network ledger and the end action; and the two things a person can do
// to a payment in recovery: cancel it, or retry it now, each with a reason for the audit log.

import { gql, subscribe } from "../api.js";
import {
  announce,
  askReason,
  errorBox,
  figure,
  formatCount,
  formatDateTime,
  formatMoney,
  h,
  label,
  loading,
  table,
} from "../dom.js";
import { stateBadge } from "./payments.js";

export const PAYMENT_QUERY = `
  query PaymentDetail($id: ID!, $merchantId: ID!) {
    merchant(id: $merchantId) { id status retryPolicy { timezone } }
    node(id: $id) {
      ... on Payment {
        id state processor processorPaymentId invoiceRef subscriptionRef
        amount { amountMinor currency }
        failedAt nextRetryAt recoveredAt recoveredBy attemptCount
        customer { externalRef country timezone }
        card { brand last4 expMonth expYear funding country }
        decline { category rawCode advice retryable networkDeclineCode networkAdviceCode }
        attempts {
          number attemptedAt actor outcome
          card { brand last4 expMonth expYear funding }
          decline { category rawCode }
        }
        timeline { at fromState toState event actor reason requestedBy }
        decision { chosenAt strategy reason explanation }
        ledger { attemptsLast24h attemptsLast30d blockingRule nextAllowedAt }
        endAction { action status detail lastError tries createdAt completedAt nextAttemptAt }
      }
    }
  }
`;

const CANCEL_MUTATION = `
  mutation CancelPaymentRecovery($paymentId: ID!, $reason: String!) {
    cancelPaymentRecovery(paymentId: $paymentId, reason: $reason) {
      errors { code message field }
      payment { id state }
    }
  }
`;

const RETRY_MUTATION = `
  mutation RetryPaymentNow($paymentId: ID!, $reason: String!) {
    retryPaymentNow(paymentId: $paymentId, reason: $reason) {
      errors { code message field }
      explanation
      payment { id state nextRetryAt }
    }
  }
`;

const EVENTS_SUBSCRIPTION = `
  subscription PaymentLive($merchantId: ID!, $after: String) {
    paymentEvents(merchantId: $merchantId, after: $after) { cursor payload }
  }
`;

// What the API allows (app/services/retry/manual.py), said before the user tries: cancel
// while recovery goes on and no charge is in flight; retry now while waiting for a retry.
const OPEN_STATES = ["PENDING", "SCHEDULED"];

function cancelBlocked(payment) {
  if (payment.state === "RETRYING")
    return "A charge is in flight: cancel once its outcome is recorded.";
  if (!OPEN_STATES.includes(payment.state))
    return `Recovery has ended: the payment is ${label(payment.state).toLowerCase()}.`;
  return null;
}

function retryBlocked(payment, merchant) {
  if (payment.state === "RETRYING") return "A charge is in flight now.";
  if (!OPEN_STATES.includes(payment.state))
    return `Recovery has ended: the payment is ${label(payment.state).toLowerCase()}.`;
  if (merchant.status !== "ACTIVE") return "Recovery is paused for this merchant.";
  return null;
}

export async function render(root, ctx) {
  const paymentId = ctx.args[0];
  announce(""); // what another screen said no longer applies here
  const listLink = h(
    "a",
    { class: "back", href: ctx.merchantPath(ctx.merchant.id, "payments") },
    "← Payments"
  );
  const heading = h("h1", { class: "payment-detail-title" }, "Payment");
  const body = h("div", { class: "payment-detail" }, loading());
  root.append(listLink, heading, body);

  // Kept across reloads: what the last action said, shown above the actions.
  let notice = null;
  let current = null;

  async function load({ fresh = false } = {}) {
    let data;
    try {
      data = await gql(
        PAYMENT_QUERY,
        { id: paymentId, merchantId: ctx.merchant.id },
        { signal: ctx.signal }
      );
    } catch (error) {
      if (error.name === "AbortError") return;
      body.replaceChildren(errorBox(error, { retry: () => load() }));
      return;
    }
    const payment = data.node;
    if (!payment || !payment.processorPaymentId || !data.merchant) {
      body.replaceChildren(
        errorBox({
          message: "This payment does not exist or is not visible to this key.",
          code: "NOT_FOUND",
        })
      );
      return;
    }
    current = payment;
    const timeZone = data.merchant.retryPolicy?.timezone || "UTC";
    heading.replaceChildren(`Payment ${payment.processorPaymentId} `, stateBadge(payment.state));
    body.replaceChildren(
      ...detail(payment, data.merchant, timeZone, actions(payment, data.merchant))
    );
    if (fresh) body.querySelector(".payment-figures").classList.add("fresh");
  }

  function actions(payment, merchant) {
    const errors = h("div", { class: "action-errors" });
    const run = async (button, title, confirm, mutation, field) => {
      const reason = await askReason(title, {
        confirm,
        detail: `Payment ${payment.processorPaymentId}, ${formatMoney(
          payment.amount.amountMinor,
          payment.amount.currency
        )}.`,
      });
      if (reason === null) return;
      button.disabled = true;
      errors.replaceChildren();
      let result;
      try {
        const data = await gql(mutation, { paymentId: payment.id, reason }, { signal: ctx.signal });
        result = data[field];
      } catch (error) {
        if (error.name === "AbortError") return;
        errors.replaceChildren(errorBox(error));
        button.disabled = false;
        return;
      }
      if (result.errors.length) {
        errors.replaceChildren(
          ...result.errors.map((e) => errorBox({ message: e.message, code: e.code }))
        );
        button.disabled = false;
        return;
      }
      // The status line says it happened; the retry's placement (which rule moved it) is
      // kept beside the actions, where it stays readable after the reload.
      const done = field === "cancelPaymentRecovery" ? "Recovery canceled." : "Retry requested.";
      notice =
        field === "retryPaymentNow" && result.explanation
          ? `How the retry was placed: ${result.explanation}`
          : null;
      announce(done, { tone: "success" });
      await load({ fresh: true });
    };

    const cancelWhy = cancelBlocked(payment);
    const retryWhy = retryBlocked(payment, merchant);
    // Both refused for one reason (recovery has ended): said once, under both.
    const sameReason = Boolean(cancelWhy) && cancelWhy === retryWhy;
    const why = (own) => (sameReason ? "actions-why" : own);
    const cancel = h(
      "button",
      {
        type: "button",
        class: "danger",
        id: "cancel-recovery",
        disabled: Boolean(cancelWhy),
        "aria-describedby": why("cancel-why"),
      },
      "Cancel recovery"
    );
    cancel.addEventListener("click", () =>
      run(
        cancel,
        "Cancel this payment's recovery?",
        "Cancel recovery",
        CANCEL_MUTATION,
        "cancelPaymentRecovery"
      )
    );
    const retry = h(
      "button",
      {
        type: "button",
        id: "retry-now",
        disabled: Boolean(retryWhy),
        "aria-describedby": why("retry-why"),
      },
      "Retry now"
    );
    retry.addEventListener("click", () =>
      run(retry, "Retry this payment now?", "Retry now", RETRY_MUTATION, "retryPaymentNow")
    );
    return h(
      "section",
      { class: "card payment-actions", "aria-labelledby": "actions-title" },
      h("h2", { id: "actions-title" }, "Actions"),
      notice ? h("p", { class: "notice" }, notice) : null,
      sameReason
        ? [
            h("div", { class: "action-row" }, retry, cancel),
            h("p", { class: "help", id: "actions-why" }, cancelWhy),
          ]
        : h(
            "div",
            { class: "action-row" },
            h(
              "div",
              {},
              retry,
              h(
                "p",
                { class: "help", id: "retry-why" },
                retryWhy || "Schedules the next retry for now; the card-network rules still apply."
              )
            ),
            h(
              "div",
              {},
              cancel,
              h(
                "p",
                { class: "help", id: "cancel-why" },
                cancelWhy || "Stops recovery; no more retries are made."
              )
            )
          ),
      errors
    );
  }

  await load();

  // Changes made elsewhere (the engine's retries, another user) show up here too.
  let timer = null;
  const stop = subscribe(
    EVENTS_SUBSCRIPTION,
    { merchantId: ctx.merchant.id },
    {
      cursorOf: (data) => data.paymentEvents.cursor,
      // Following changes here is a convenience: the page stays as loaded (and reloads after
      // the user's own actions), so a lost stream is not worth an alarm.
      onError: () => {},
      onData: (data) => {
        const payload = data.paymentEvents.payload || {};
        if (!current || payload.processor_payment_id !== current.processorPaymentId) return;
        if (String(payload.processor).toUpperCase() !== current.processor) return;
        if (!timer) {
          timer = window.setTimeout(() => {
            timer = null;
            load({ fresh: true });
          }, 250);
        }
      },
    }
  );
  ctx.signal.addEventListener("abort", () => {
    if (timer) window.clearTimeout(timer);
    stop();
  });
}

// ---- the page's parts --------------------------------------------------------------------

function detail(payment, merchant, timeZone, actionsSection) {
  const money = (minor) => formatMoney(minor, payment.amount.currency);
  const time = (iso) => formatDateTime(iso, timeZone);
  return [
    h(
      "div",
      { class: "figures payment-figures" },
      figure("Amount", money(payment.amount.amountMinor), payment.amount.currency),
      figure("State", label(payment.state), stateNote(payment, time)),
      figure("First failed", time(payment.failedAt)),
      figure("Attempts", formatCount(payment.attemptCount), "the first failure included")
    ),
    actionsSection,
    h(
      "div",
      { class: "grid facts-grid" },
      facts("Customer", [
        ["Reference", payment.customer?.externalRef],
        ["Country", payment.customer?.country],
        ["Time zone", payment.customer?.timezone || "the policy's"],
      ]),
      facts("Card", cardFacts(payment.card)),
      facts("First decline", [
        ["Category", label(payment.decline.category)],
        ["Processor's code", payment.decline.rawCode],
        ["Advice", label(payment.decline.advice)],
        ["Same card retryable", payment.decline.retryable ? "Yes" : "No"],
        ["Network decline code", payment.decline.networkDeclineCode],
        ["Network advice code", payment.decline.networkAdviceCode],
      ]),
      facts("References", [
        ["Processor", label(payment.processor)],
        ["Processor's payment id", payment.processorPaymentId],
        ["Invoice", payment.invoiceRef],
        ["Subscription", payment.subscriptionRef],
      ])
    ),
    h(
      "div",
      { class: "grid decision-grid" },
      decisionSection(payment.decision, time),
      ledgerSection(payment.ledger, time),
      payment.endAction ? endActionSection(payment.endAction, time) : null
    ),
    h("h2", { id: "attempts-title" }, "Attempts"),
    stacked(
      table({
        caption: `Attempts, oldest first (times in ${timeZone})`,
        rows: payment.attempts,
        empty: "No attempts recorded.",
        rowAttributes: (a) => ({ dataset: { number: String(a.number) } }),
        columns: [
          { title: "#", render: (a) => String(a.number), numeric: true },
          { title: "When", render: (a) => h("span", { class: "nowrap" }, time(a.attemptedAt)) },
          { title: "By", render: (a) => label(a.actor) },
          { title: "Outcome", render: (a) => outcomeBadge(a.outcome) },
          { title: "Card", render: (a) => cardLine(a.card) },
          { title: "Decline", render: (a) => (a.decline ? declineLine(a.decline) : "—") },
        ],
      })
    ),
    h("h2", { id: "timeline-title" }, "Timeline"),
    stacked(
      table({
        caption: `State changes, oldest first (times in ${timeZone})`,
        rows: payment.timeline,
        empty: "No state changes yet.",
        columns: [
          { title: "When", render: (t) => h("span", { class: "nowrap" }, time(t.at)) },
          { title: "Change", render: (t) => transition(t) },
          { title: "Event", render: (t) => t.event.replaceAll("_", " ") },
          {
            title: "By",
            render: (t) => [
              label(t.actor),
              t.requestedBy ? h("span", { class: "sub" }, `requested by ${t.requestedBy}`) : null,
            ],
          },
          { title: "Reason", render: (t) => h("span", { class: "reason" }, t.reason) },
        ],
      })
    ),
  ];
}

// Marks a table so that a phone shows each row as a card: every cell names its column, and
// its content is kept in one span beside that name.
function stacked(wrap) {
  const table = wrap.querySelector("table");
  if (!table) return wrap; // the "nothing to show" paragraph
  table.classList.add("stack");
  const titles = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const row of table.querySelectorAll("tbody tr")) {
    [...row.cells].forEach((cell, i) => {
      cell.dataset.label = titles[i];
      cell.replaceChildren(h("span", {}, ...cell.childNodes));
    });
  }
  return wrap;
}

function stateNote(payment, time) {
  if (payment.recoveredAt) {
    const by = payment.recoveredBy ? `, by ${label(payment.recoveredBy).toLowerCase()}` : "";
    return `${time(payment.recoveredAt)}${by}`;
  }
  if (payment.nextRetryAt) return `next retry ${time(payment.nextRetryAt)}`;
  return null;
}

// A card's definition list; missing values are a dash.
function facts(title, rows) {
  return h(
    "section",
    { class: "card facts", "aria-label": title },
    h("h2", {}, title),
    h(
      "dl",
      {},
      rows.map(([term, value]) => [
        h("dt", {}, term),
        h("dd", {}, value === null || value === undefined || value === "" ? "—" : value),
      ])
    )
  );
}

function expiry(card) {
  return `${String(card.expMonth).padStart(2, "0")}/${card.expYear}`;
}

function cardFacts(card) {
  if (!card) return [["Card", "Not known"]];
  return [
    ["Brand", card.brand],
    ["Last four", card.last4],
    ["Expires", expiry(card)],
    ["Funding", label(card.funding)],
    ["Issuer country", card.country],
  ];
}

function cardLine(card) {
  if (!card) return "—";
  return `${card.brand} ·· ${card.last4}, ${expiry(card)}, ${label(card.funding).toLowerCase()}`;
}

function declineLine(decline) {
  return [
    label(decline.category),
    decline.rawCode ? h("span", { class: "sub" }, decline.rawCode) : null,
  ];
}

const OUTCOME_TONES = { SUCCEEDED: "good", DECLINED: "bad", ERROR: "bad", IN_FLIGHT: "warn" };

function outcomeBadge(outcome) {
  return h(
    "span",
    { class: "badge", dataset: { tone: OUTCOME_TONES[outcome] || "none" } },
    label(outcome)
  );
}

function transition(t) {
  if (t.fromState === t.toState) return h("span", { class: "same-state" }, label(t.toState));
  return [label(t.fromState), " → ", h("strong", {}, label(t.toState))];
}

function decisionSection(decision, time) {
  const content = decision
    ? [
        h(
          "p",
          {},
          h("strong", {}, label(decision.strategy || "unknown")),
          ` strategy, decided ${time(decision.chosenAt)}.`
        ),
        h("p", { class: "reason" }, decision.reason),
        decision.explanation.length
          ? [
              h("h3", {}, "What weighed most on the model's choice"),
              h(
                "ol",
                { class: "explanation" },
                decision.explanation.map((line) => h("li", {}, line))
              ),
            ]
          : h(
              "p",
              { class: "help" },
              "A rule-based decision: the model's explanation applies only when the model chose the time."
            ),
      ]
    : [h("p", { class: "empty" }, "No retry decision yet.")];
  return h(
    "section",
    { class: "card decision", "aria-labelledby": "decision-title" },
    h("h2", { id: "decision-title" }, "Retry decision"),
    content
  );
}

function ledgerSection(ledger, time) {
  return h(
    "section",
    { class: "card ledger", "aria-labelledby": "ledger-title" },
    h("h2", { id: "ledger-title" }, "Card-network ledger"),
    ledger
      ? h(
          "dl",
          {},
          h("dt", {}, "Attempts in the last 24 hours"),
          h("dd", {}, formatCount(ledger.attemptsLast24h)),
          h("dt", {}, "Attempts in the last 30 days"),
          h("dd", {}, formatCount(ledger.attemptsLast30d)),
          h("dt", {}, "Rule holding the retry back"),
          h("dd", {}, ledger.blockingRule || "None"),
          h("dt", {}, "Earliest retry the rules allow"),
          h("dd", {}, ledger.nextAllowedAt ? time(ledger.nextAllowedAt) : "None allowed")
        )
      : h("p", { class: "empty" }, "No ledger for this payment."),
    h("p", { class: "help" }, "Attempts by anyone at this merchant on the cards a retry may hit.")
  );
}

function endActionSection(endAction, time) {
  return h(
    "section",
    { class: "card end-action", "aria-labelledby": "end-action-title" },
    h("h2", { id: "end-action-title" }, "End action"),
    h(
      "dl",
      {},
      h("dt", {}, "Action"),
      h("dd", {}, label(endAction.action)),
      h("dt", {}, "Status"),
      h("dd", {}, label(endAction.status)),
      h("dt", {}, "Recovery ended"),
      h("dd", {}, time(endAction.createdAt)),
      h("dt", {}, "Tries"),
      h("dd", {}, formatCount(endAction.tries)),
      endAction.completedAt
        ? [h("dt", {}, "Completed"), h("dd", {}, time(endAction.completedAt))]
        : null,
      endAction.nextAttemptAt
        ? [h("dt", {}, "Next try"), h("dd", {}, time(endAction.nextAttemptAt))]
        : null,
      endAction.detail ? [h("dt", {}, "Detail"), h("dd", {}, endAction.detail)] : null,
      endAction.lastError ? [h("dt", {}, "Last error"), h("dd", {}, endAction.lastError)] : null
    )
  );
}
