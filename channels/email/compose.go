package email

import (
	"fmt"
	"html/template"
	"strings"
	"unicode/utf8"

	gomail "github.com/wneessen/go-mail"

	"github.com/dingmq/ding/engine"
)

// A DING's e-mail: the subject names the sender; the body (plain text,
// and HTML as an alternative) is the DING's text and one link per choice
// (or one "Confirm" link), each signed for this recipient, this DING and
// that answer. It holds no other recipient and no key.

// maxSubjectRunes bounds the subject; the body has the whole text.
const maxSubjectRunes = 78

// choiceLink is one answer the e-mail offers.
type choiceLink struct {
	Label string
	URL   string
}

type mailData struct {
	Text    string
	Choices []choiceLink
	Expires string
}

var htmlBody = template.Must(template.New("mail").Parse(`<!DOCTYPE html>
<html><body style="font-family: sans-serif">
<p style="white-space: pre-wrap">{{.Text}}</p>
<p>{{range .Choices}}<a href="{{.URL}}" style="display: inline-block; margin: 4px; padding: 8px 16px; border: 1px solid #333; border-radius: 4px; text-decoration: none">{{.Label}}</a> {{end}}</p>
<p style="color: #666; font-size: small">Each button opens a page that records your answer once. The links work until {{.Expires}}. You can also answer in the Ding app.</p>
</body></html>
`))

// links returns the e-mail's answer links for o.
func (n *Notifier) links(o engine.Outbound) []choiceLink {
	exp := n.now().Add(n.ttl).Truncate(1e9)
	link := func(answer int) string {
		return n.public + PathConfirm + "?t=" + SignLink(n.cfg.Key, Link{Ding: o.Ding, Recipient: o.Recipient, Answer: answer, Expires: exp})
	}
	if len(o.Choices) == 0 {
		return []choiceLink{{"Confirm", link(0)}}
	}
	out := make([]choiceLink, len(o.Choices))
	for i, c := range o.Choices {
		out[i] = choiceLink{c, link(i + 1)}
	}
	return out
}

// compose builds the message for o and returns it with its Message-ID.
func (n *Notifier) compose(o engine.Outbound) (*gomail.Msg, string, error) {
	m := gomail.NewMsg()
	if err := m.From(n.cfg.From); err != nil {
		return nil, "", err
	}
	if err := m.To(o.To); err != nil {
		return nil, "", err
	}
	sender := o.Sender
	if sender == "" {
		sender = "Ding"
	}
	m.Subject(subject(sender, o.Text))
	id := n.messageID(o)
	m.SetMessageIDWithValue(id)
	m.SetDateWithValue(n.now())
	m.SetGenHeader(gomail.HeaderXAutoResponseSuppress, "All")
	m.SetGenHeader("Auto-Submitted", "auto-generated")
	d := mailData{Text: o.Text, Choices: n.links(o), Expires: n.now().Add(n.ttl).UTC().Format("2006-01-02 15:04 MST")}
	var text strings.Builder
	text.WriteString(o.Text)
	text.WriteString("\n\n")
	if len(o.Choices) == 0 {
		text.WriteString("Confirm that you got this DING:\n")
	} else {
		text.WriteString("Answer with one of these links:\n")
	}
	for i, c := range d.Choices {
		fmt.Fprintf(&text, "\n  %d. %s\n     %s\n", i+1, c.Label, c.URL)
	}
	fmt.Fprintf(&text, "\nEach link opens a page that records your answer once. The links work until %s.\nYou can also answer in the Ding app.\n", d.Expires)
	m.SetBodyString(gomail.TypeTextPlain, text.String())
	var html strings.Builder
	if err := htmlBody.Execute(&html, d); err != nil {
		return nil, "", err
	}
	m.AddAlternativeString(gomail.TypeTextHTML, html.String())
	return m, "<" + id + ">", nil
}

// subject is "DING from SENDER: first line of the text", cut to
// maxSubjectRunes at a rune, on one line.
func subject(sender, text string) string {
	text = strings.TrimPrefix(text, "DING from "+sender+": ")
	line, _, _ := strings.Cut(text, "\n")
	s := strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' {
			return ' '
		}
		return r
	}, "DING from "+sender+": "+strings.TrimSpace(line))
	if utf8.RuneCountInString(s) <= maxSubjectRunes {
		return s
	}
	r := []rune(s)
	return string(r[:maxSubjectRunes-1]) + "…"
}
