package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestEmailSettings: the e-mail settings need each other and say which
// is missing; smtp-tls none is refused off loopback; the password is read
// from its file (first line) and never printed.
func TestEmailSettings(t *testing.T) {
	base := []string{"--public-url", "https://ding.example.com"}
	for _, tc := range []struct {
		name string
		args []string
		want string // in the error; "" for none
	}{
		{"none", nil, ""},
		{"complete", []string{"--smtp-addr", "smtp.example.com:587", "--email-from", "Ding <ding@example.com>"}, ""},
		{"no from", []string{"--smtp-addr", "smtp.example.com:587"}, "smtp-addr (from flag) needs email-from"},
		{"from without server", []string{"--email-from", "ding@example.com"}, "email-from (from flag) needs smtp-addr"},
		{"plain text off loopback", []string{"--smtp-addr", "smtp.example.com:25", "--smtp-tls", "none", "--email-from", "ding@example.com"}, `allowed only to a loopback server`},
		{"bad mode", []string{"--smtp-addr", "smtp.example.com:25", "--smtp-tls", "ssl", "--email-from", "ding@example.com"}, "TLS must be starttls, tls or none"},
		{"bad from", []string{"--smtp-addr", "smtp.example.com:25", "--email-from", "ding"}, "From must be an address"},
		{"password without user", []string{"--smtp-addr", "smtp.example.com:25", "--email-from", "ding@example.com", "--smtp-password-file", "/x"}, "needs smtp-username"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(append(append([]string{}, base...), tc.args...), fakeEnv(nil))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("load: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("load: %v; want an error with %q", err, tc.want)
			}
		})
	}
	if _, err := load([]string{"--smtp-addr", "smtp.example.com:587", "--email-from", "ding@example.com"}, fakeEnv(nil)); err == nil || !strings.Contains(err.Error(), "needs public-url") {
		t.Fatalf("without public-url: %v", err)
	}

	pwFile := tempFile(t, "smtp.password", "pa55word\nignored\n")
	c, err := load(append(base, "--smtp-addr", "127.0.0.1:2525", "--smtp-tls", "none", "--email-from", "ding@example.com",
		"--smtp-username", "ding", "--smtp-password-file", pwFile), fakeEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	pw, err := readPassword(c.SMTPPasswordFile)
	if err != nil || pw != "pa55word" {
		t.Fatalf("password %q, %v", pw, err)
	}
	var out bytes.Buffer
	if err := printConfig(&out, c); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "pa55word") || !strings.Contains(out.String(), "smtp-password-file = ") {
		t.Fatalf("--print-config:\n%s", out.String())
	}
	if _, err := readPassword(tempFile(t, "empty", "\n")); err == nil || strings.Contains(err.Error(), "pa55word") {
		t.Fatalf("empty password file: %v", err)
	}
}
