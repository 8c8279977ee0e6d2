// Package alert tells a human about suspicious activity on the gateway.
//
// An [Engine] reads the audit log's live feed ([audit.Store.Subscribe]),
// applies built-in rules to each event (a burst of failed logins from one
// source, any attempt as root or by password, a user's first login from a
// new network, a ban, a CA or lock change, a user refused again and
// again), folds repeats so that one attack raises a handful of alerts
// rather than thousands, and delivers them to webhooks: Slack-compatible
// JSON ({"text": ...}) or the raw audit event with the rule's name,
// optionally signed with HMAC-SHA256.
//
// Nothing here can slow authentication or a session: the gateway's audit
// appends only offer events to the feed (a full feed drops and counts),
// rules run on the engine's own goroutine, and each webhook has a bounded
// queue and its own workers that retry with exponential backoff. An alert
// that cannot be delivered within the retry budget is a dead letter:
// counted in bastion_alert_dead_letters_total and recorded in the audit log
// as alert.failed; each delivered one is recorded as alert.sent.
package alert
