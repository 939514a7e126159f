package twilio

import (
	"encoding/xml"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Twilio's limits on what Send composes; past them Twilio answers 400. A
// long DING text is shortened (ending in "…") to fit, so that it still
// escalates; a menu too long to fit is rejected locally.
const (
	maxSMSRunes = 1600 // a message body, in characters (error 21617)
	maxTwiml    = 4000 // the Twiml parameter of a call, in characters
)

// smsBody is the message text followed by a line that says how to answer,
// the text shortened if the whole would exceed maxSMSRunes.
func smsBody(text string, choices []string) string {
	var h strings.Builder
	if len(choices) == 0 {
		h.WriteString("Reply 1 or OK to confirm.")
	} else {
		h.WriteString("Reply ")
		for i, c := range choices {
			if i > 0 {
				h.WriteString(", ")
			}
			h.WriteString(strconv.Itoa(i + 1))
			h.WriteString(" for ")
			h.WriteString(c)
		}
		h.WriteString(".")
	}
	hint := h.String()
	text = shorten(strings.TrimRight(text, " \t\r\n"), maxSMSRunes-utf8.RuneCountInString(hint)-1)
	return text + "\n" + hint
}

// shorten cuts s to at most n runes, ending in "…" when cut.
func shorten(s string, n int) string {
	if n < 1 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// callTwiml speaks the text and its menu inside a one-digit <Gather> that
// posts to gatherURL; without a keypress the call says goodbye.
func callTwiml(text string, choices []string, gatherURL string) string {
	tw := callTwimlText(text, choices, gatherURL)
	for n := utf8.RuneCountInString(text); len(tw) > maxTwiml && n > 0; { // bytes: stricter than characters
		n = n * 4 / 5
		tw = callTwimlText(shorten(text, n), choices, gatherURL)
	}
	return tw
}

func callTwimlText(text string, choices []string, gatherURL string) string {
	var say strings.Builder
	say.WriteString(sentence(text))
	if len(choices) == 0 {
		say.WriteString(" Press 1 to confirm.")
	}
	for i, c := range choices {
		say.WriteString(" Press ")
		say.WriteString(strconv.Itoa(i + 1))
		say.WriteString(" for ")
		say.WriteString(sentence(c))
	}
	var b strings.Builder
	b.WriteString(`<Response><Gather numDigits="1" timeout="10" action="`)
	escape(&b, gatherURL)
	b.WriteString(`" method="POST"><Say>`)
	escape(&b, say.String())
	b.WriteString(`</Say></Gather><Say>No answer was recorded. Goodbye.</Say></Response>`)
	return b.String()
}

// sentence ends s with a full stop unless it already ends a sentence.
func sentence(s string) string {
	s = strings.TrimSpace(s)
	if s == "" || strings.HasSuffix(s, ".") || strings.HasSuffix(s, "!") || strings.HasSuffix(s, "?") {
		return s
	}
	return s + "."
}

func escape(b *strings.Builder, s string) {
	// EscapeText writes to a strings.Builder, which cannot fail.
	_ = xml.EscapeText(b, []byte(s))
}

// thanksTwiml and sorryTwiml answer a <Gather> action.
const (
	thanksTwiml  = `<Response><Say>Thank you. Your answer is recorded.</Say></Response>`
	sorryTwiml   = `<Response><Say>Sorry, that answer was not recorded. Goodbye.</Say></Response>`
	noInputTwiml = `<Response><Say>No answer was recorded. Goodbye.</Say></Response>`
	emptyTwiml   = `<Response/>`
)
