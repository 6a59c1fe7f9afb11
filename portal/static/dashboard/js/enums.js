// The schema's enums the screens offer as choices, in the order a person scans them (their
// descriptions are in the API's schema; `label()` in dom.js words each value).

export const STATES = [
  "PENDING",
  "SCHEDULED",
  "RETRYING",
  "RECOVERED",
  "EXHAUSTED",
  "NOT_RETRYABLE",
  "CANCELED",
];
export const PROCESSORS = ["STRIPE", "BRAINTREE", "ADYEN", "CHECKOUT"];
export const ACTORS = ["PORTAL", "CUSTOMER", "BILLING_SYSTEM", "PROCESSOR"];
// Most frequent first.
export const DECLINE_CATEGORIES = [
  "INSUFFICIENT_FUNDS",
  "DO_NOT_HONOR",
  "CARD_EXPIRED",
  "CARD_DATA_INCORRECT",
  "AUTHENTICATION_REQUIRED",
  "VELOCITY_EXCEEDED",
  "PROCESSING_ERROR",
  "PROCESSOR_BLOCKED",
  "NOT_PERMITTED",
  "INVALID_ACCOUNT",
  "FRAUD_SUSPECTED",
  "LOST_STOLEN",
  "PAYMENT_REVOKED",
  "OTHER",
];
