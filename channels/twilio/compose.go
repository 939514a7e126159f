package twilio

import (
	"encoding/xml"
	"strconv"
	"strings"
)

// Twilio's limits on what Send composes; past them Twilio answers 400, so
// Send rejects locally.
const (
	maxSMSRunes = 1600 // a message body, in characters (error 21617)
	maxTwiml    = 4000 // the Twiml parameter of a call, in characters
)

// smsBody is the message text followed by a line that says how to answer.
func smsBody(text string, choices []string) string {
	var b strings.Builder
	b.WriteString(strings.TrimRight(text, " \t\r\n"))
	b.WriteString("\n")
	if len(choices) == 0 {
		b.WriteString("Reply 1 or OK to confirm.")
		return b.String()
	}
	b.WriteString("Reply ")
	for i, c := range choices {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(i + 1))
		b.WriteString(" for ")
		b.WriteString(c)
	}
	b.WriteString(".")
	return b.String()
}

// callTwiml speaks the text and its menu inside a one-digit <Gather> that
// posts to gatherURL; without a keypress the call says goodbye.
func callTwiml(text string, choices []string, gatherURL string) string {
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
