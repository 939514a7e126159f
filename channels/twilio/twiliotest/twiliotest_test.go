package twiliotest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingmq/ding/channels/twilio/twiliotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	sid   = "AC0123456789abcdef0123456789abcdef"
	token = "token123"
)

// TestSignKnownVector checks Sign against the example Twilio's libraries
// test their validators with.
func TestSignKnownVector(t *testing.T) {
	params := url.Values{
		"Digits":                {"1234"},
		"CallSid":               {"CA1234567890ABCDE"},
		"To":                    {"+18005551212"},
		"Caller":                {"+14158675309"},
		"From":                  {"+14158675309"},
		"ReasonConferenceEnded": {"test"},
		"Reason":                {"Participant"},
	}
	if got, want := twiliotest.Sign("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params), "vOEb5UThFn24KEfnOFLQY2AE5FY="; got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
}

func post(t *testing.T, s *twiliotest.Server, user, pass, path string, form url.Values) (int, map[string]any) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, s.URL()+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(user, pass)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("decode answer: %v", err)
	}
	return resp.StatusCode, body
}

func TestREST(t *testing.T) {
	s := twiliotest.NewServer(sid, token)
	defer s.Close()
	msgs := "/2010-04-01/Accounts/" + sid + "/Messages.json"
	calls := "/2010-04-01/Accounts/" + sid + "/Calls.json"
	ok := url.Values{"To": {"+15551234567"}, "From": {"+15005550006"}, "Body": {"hi"}}
	for _, tc := range []struct {
		name       string
		user, pass string
		path       string
		form       url.Values
		status     int
		code       float64
	}{
		{"bad password", sid, "nope", msgs, ok, 401, 20003},
		{"other account", "ACother", token, msgs, ok, 401, 20003},
		{"no To", sid, token, msgs, url.Values{"From": {"+15005550006"}, "Body": {"hi"}}, 400, 21604},
		{"To not E.164", sid, token, msgs, url.Values{"To": {"5551234567"}, "From": {"+15005550006"}, "Body": {"hi"}}, 400, 21211},
		{"From not E.164", sid, token, msgs, url.Values{"To": {"+15551234567"}, "From": {"x"}, "Body": {"hi"}}, 400, 21212},
		{"no body", sid, token, msgs, url.Values{"To": {"+15551234567"}, "From": {"+15005550006"}}, 400, 21602},
		{"call without twiml", sid, token, calls, url.Values{"To": {"+15551234567"}, "From": {"+15005550006"}}, 400, 21205},
		{"ill-formed twiml", sid, token, calls, url.Values{"To": {"+15551234567"}, "From": {"+15005550006"}, "Twiml": {"<Response><Say>x</Response>"}}, 400, 12100},
		{"sms", sid, token, msgs, ok, 201, 0},
		{"call", sid, token, calls, url.Values{"To": {"+15551234567"}, "From": {"+15005550006"},
			"Twiml": {`<Response><Gather action="http://h/a?x=1&amp;y=2"><Say>x</Say></Gather></Response>`}}, 201, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(t, s, tc.user, tc.pass, tc.path, tc.form)
			if status != tc.status {
				t.Fatalf("status %d, want %d (%v)", status, tc.status, body)
			}
			if tc.code != 0 && (body["code"] != tc.code || body["status"] != float64(tc.status)) {
				t.Fatalf("answer %v, want code %v", body, tc.code)
			}
			if tc.status == 201 && (body["status"] != "queued" || len(body["sid"].(string)) != 34) {
				t.Fatalf("answer %v", body)
			}
		})
	}
	reqs := s.Requests()
	if len(reqs) != 2 || reqs[0].Kind != "sms" || reqs[0].Body != "hi" || reqs[1].Kind != "call" ||
		reqs[1].GatherAction != "http://h/a?x=1&y=2" || !strings.HasPrefix(reqs[1].SID, "CA") {
		t.Fatalf("recorded %+v", reqs)
	}
	if s.Count("sms") != 1 || s.Count("call") != 1 || s.Count("") != 2 {
		t.Fatalf("counts %d %d %d", s.Count("sms"), s.Count("call"), s.Count(""))
	}
}

func TestFaults(t *testing.T) {
	s := twiliotest.NewServer(sid, token)
	defer s.Close()
	msgs := "/2010-04-01/Accounts/" + sid + "/Messages.json"
	ok := url.Values{"To": {"+15551234567"}, "From": {"+15005550006"}, "Body": {"hi"}}

	s.FailNext(2, 503)
	for range 2 {
		if status, body := post(t, s, sid, token, msgs, ok); status != 503 || body["code"] != float64(20503) {
			t.Fatalf("got %d %v, want 503", status, body)
		}
	}
	if status, _ := post(t, s, sid, token, msgs, ok); status != 201 {
		t.Fatalf("after FailNext: %d", status)
	}

	s.HangNext(1)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+msgs, strings.NewReader(ok.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(sid, token)
	if _, err := (&http.Client{Transport: tr}).Do(req); err == nil {
		t.Fatal("hung request answered")
	}
	if n := s.Count("sms"); n != 1 {
		t.Fatalf("recorded %d, want 1", n)
	}
}

func TestWaitFor(t *testing.T) {
	s := twiliotest.NewServer(sid, token)
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.WaitFor(ctx, "sms", 1)
		done <- err
	}()
	post(t, s, sid, token, "/2010-04-01/Accounts/"+sid+"/Messages.json",
		url.Values{"To": {"+15551234567"}, "From": {"+15005550006"}, "Body": {"hi"}})
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if _, err := s.WaitFor(short, "call", 1); err == nil {
		t.Fatal("WaitFor returned without a call")
	}
}
