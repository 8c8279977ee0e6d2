package alert

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/bastion-ssh/bastion/audit"
)

// Signing. With a secret, every request carries
//
//	X-Bastion-Timestamp: <unix seconds when the request was made>
//	X-Bastion-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//
// where body is the exact request body. A receiver recomputes the HMAC over
// the timestamp header, a dot and the raw body, compares in constant time,
// and rejects timestamps more than a few minutes old (replays).
// X-Bastion-Alert-Id is the same on every attempt of one alert, so a
// receiver can drop the duplicates a retry after a lost reply produces.
const (
	SignatureHeader = "X-Bastion-Signature"
	TimestampHeader = "X-Bastion-Timestamp"
	AlertIDHeader   = "X-Bastion-Alert-Id"
)

// Alert is one notification.
type Alert struct {
	// ID is random, the same on every delivery attempt.
	ID string
	// Rule is the rule's name (Rule*).
	Rule string
	// Key is what the alert is about: a source address, a user, a CA.
	Key string
	// Text is one line for a human.
	Text string
	// Source names the gateway (Config.Source).
	Source string
	// Time is when the alert was raised.
	Time time.Time
	// Count is how many events stand behind it (threshold rules).
	Count int
	// Suppressed is how many similar alerts of the rule were held back
	// since its previous one.
	Suppressed int
	// Event is the audit event that raised it.
	Event audit.Event
}

// Payload is the body of a FormatJSON webhook.
type Payload struct {
	ID         string      `json:"id"`
	Rule       string      `json:"rule"`
	Key        string      `json:"key"`
	Text       string      `json:"text"`
	Source     string      `json:"source,omitempty"`
	Time       time.Time   `json:"time"`
	Count      int         `json:"count"`
	Suppressed int         `json:"suppressed"`
	Event      audit.Event `json:"event"`
}

// slackPayload is the body of a FormatSlack webhook.
type slackPayload struct {
	Text string `json:"text"`
}

// message is the alert's line for a chat channel.
func (a Alert) message() string {
	s := "bastion"
	if a.Source != "" {
		s += " " + a.Source
	}
	s += " [" + a.Rule + "]: " + a.Text
	if a.Suppressed > 0 {
		s += fmt.Sprintf(" (+%d similar held back since the previous %s alert)", a.Suppressed, a.Rule)
	}
	return s
}

// body renders a for format.
func (a Alert) body(format Format) ([]byte, error) {
	if format == FormatJSON {
		return json.Marshal(Payload{ID: a.ID, Rule: a.Rule, Key: a.Key, Text: a.message(), Source: a.Source, Time: a.Time.UTC(), Count: a.Count, Suppressed: a.Suppressed, Event: a.Event})
	}
	return json.Marshal(slackPayload{Text: a.message()})
}

// Sign returns the signature header value for body sent at ts.
func Sign(secret []byte, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strconv.FormatInt(ts.Unix(), 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// SendError is a failed delivery attempt.
type SendError struct {
	// Status is the HTTP status, 0 when there was no response.
	Status int
	// Retryable is false when retrying cannot help (a 4xx other than 408
	// and 429: wrong URL, wrong secret).
	Retryable bool
	// RetryAfter is the receiver's Retry-After, if it sent one.
	RetryAfter time.Duration
	// Reason is a stable code: http_<status>, timeout, network.
	Reason string
	Err    error
}

// Error says what failed, naming the webhook by scheme and host only.
func (e *SendError) Error() string {
	return fmt.Sprintf("alert: webhook delivery failed (%s): %v", e.Reason, e.Err)
}

// Unwrap returns the underlying error.
func (e *SendError) Unwrap() error { return e.Err }

// Send makes one delivery attempt of a to w and returns the HTTP status.
// A 2xx status is success; anything else is a *SendError.
func (w Webhook) Send(ctx context.Context, client *http.Client, a Alert, now time.Time) (int, error) {
	format := w.Format
	if format == "" {
		format = FormatSlack
	}
	body, err := a.body(format)
	if err != nil {
		return 0, &SendError{Reason: "encode", Err: err}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return 0, &SendError{Reason: "request", Err: fmt.Errorf("%s: %w", w.Name(), err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "bastion-alerts")
	req.Header.Set(AlertIDHeader, a.ID)
	if len(w.Secret) > 0 {
		req.Header.Set(TimestampHeader, strconv.FormatInt(now.Unix(), 10))
		req.Header.Set(SignatureHeader, Sign(w.Secret, now, body))
	}
	resp, err := client.Do(req)
	if err != nil {
		reason := "network"
		if ctx.Err() != nil || isTimeout(err) {
			reason = "timeout"
		}
		// The error names the URL; keep only its scheme and host.
		return 0, &SendError{Reason: reason, Retryable: true, Err: fmt.Errorf("POST %s: %s", w.Name(), redact(err, w.URL, w.Name()))}
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // reuse the connection
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, nil
	}
	se := &SendError{
		Status: resp.StatusCode, Reason: fmt.Sprintf("http_%d", resp.StatusCode),
		Retryable: resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout,
		Err:       fmt.Errorf("POST %s: %s: %q", w.Name(), resp.Status, bytes.TrimSpace(snippet)),
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		se.RetryAfter = time.Duration(s) * time.Second
	}
	return resp.StatusCode, se
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// redact replaces the full URL in err's message with its public name.
func redact(err error, url, name string) string {
	return strings.ReplaceAll(err.Error(), url, name)
}

// newAlertID returns a random id for an alert.
func newAlertID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Sample is the alert `bastion alerts test` sends.
func Sample(source string, now time.Time) Alert {
	return Alert{
		ID: newAlertID(), Rule: "test", Key: "test", Source: source, Time: now, Count: 1,
		Text:  "this is a test alert from `bastion alerts test`; if you can read it, alerts reach you",
		Event: audit.Event{Time: now.UTC(), Type: "alert.test", Actor: "operator"},
	}
}
