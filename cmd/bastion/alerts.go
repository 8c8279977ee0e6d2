package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/bastion-ssh/bastion/internal/alert"
	"github.com/bastion-ssh/bastion/internal/config"
)

func newAlertsCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "Check that alerts reach you",
	}
	var configPath string
	test := &cobra.Command{
		Use:   "test --config bastion.yaml",
		Short: "Send a sample alert to every configured webhook and report each result",
		Long: `Send one sample alert to every webhook in the alerts: section of
bastion.yaml, in its format and signed with its secret_file, exactly as the
gateway would, and report each answer. It exits 1 if any webhook failed.
It needs neither the gateway nor the audit log.`,
		Example: `  bastion alerts test --config /etc/bastion/bastion.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := config.Load(configPath)
			if err != nil {
				return err
			}
			if f.Alerts == nil {
				return fmt.Errorf("%s has no alerts: section: add alerts: {webhooks: [{url: https://...}]} to send alerts", configPath)
			}
			cfg, err := alertConfig(f, nil)
			if err != nil {
				return err
			}
			client := &http.Client{Timeout: 10 * time.Second}
			failed := 0
			for i, w := range cfg.Webhooks {
				// Named by position, host and path: two webhooks on one
				// host differ; token-like path segments are cut short,
				// and the query and user info (credentials) stay out.
				name := fmt.Sprintf("webhooks[%d] %s", i, w.Label())
				now := time.Now()
				status, err := w.Send(cmd.Context(), client, alert.Sample(cfg.Source, now), now)
				took := time.Since(now).Round(time.Millisecond)
				if err != nil {
					failed++
					fmt.Fprintf(a.stdout, "FAIL  %s  %v (after %s)\n", name, err, took)
					continue
				}
				fmt.Fprintf(a.stdout, "ok    %s  HTTP %d in %s\n", name, status, took)
			}
			if failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d webhooks failed: alerts would not reach them", failed, len(cfg.Webhooks))}
			}
			return nil
		},
	}
	test.Flags().StringVar(&configPath, "config", "/etc/bastion/bastion.yaml", "path of bastion.yaml")
	cmd.AddCommand(test)
	return cmd
}

// alertConfig builds the alert engine's configuration from bastion.yaml,
// reading each webhook's secret_file.
func alertConfig(f *config.File, logger *slog.Logger) (alert.Config, error) {
	var hooks []alert.Webhook
	for i, w := range f.Alerts.Webhooks {
		var secret []byte
		if w.SecretFile != "" {
			b, err := os.ReadFile(w.SecretFile)
			if err != nil {
				return alert.Config{}, fmt.Errorf("alerts.webhooks[%d].secret_file: %w", i, err)
			}
			// One trailing newline (\n or \r\n) is dropped, as in the
			// passphrase files: the key is the rest, byte for byte.
			if secret = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r")); len(secret) == 0 {
				return alert.Config{}, fmt.Errorf("alerts.webhooks[%d].secret_file: %s is empty: put the shared HMAC key in it (e.g. `openssl rand -hex 32 > %s`)", i, w.SecretFile, w.SecretFile)
			}
		}
		hooks = append(hooks, alert.Webhook{URL: w.URL, Format: alert.Format(w.Format), Secret: secret})
	}
	source, err := os.Hostname()
	if err != nil {
		source = ""
	}
	return alert.Config{Webhooks: hooks, Rules: f.AlertRules(), Source: source, Logger: logger}, nil
}
