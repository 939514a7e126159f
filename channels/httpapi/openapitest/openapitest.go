// Package openapitest checks a real Ding server's answers against the
// admin API's OpenAPI document (channels/httpapi/openapi.json), with
// kin-openapi's validator, for tests: each request goes over real HTTP,
// and its answer must have a documented status, headers and body (and a
// successful request must be one the document takes).
//
// Usage:
//
//	c := openapitest.New(t, "http://"+n.HTTPAddr())   // the document the server serves
//	out := c.Call(t, "POST /v1/users", "/v1/users", token, map[string]any{"id": "ana"}, 201)
//	c.Call(t, "GET /v1/users/{id}", "/v1/users/zed", token, nil, 404)
//	validated, succeeded := c.Coverage()                // by operation
//
// It imports kin-openapi; only tests import it.
package openapitest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
)

// Load parses an OpenAPI document and validates it (refs resolve,
// schemas are schemas, ...).
func Load(tb testing.TB, raw []byte) *openapi3.T {
	tb.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(raw)
	if err != nil {
		tb.Fatalf("load the OpenAPI document: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		tb.Fatalf("the OpenAPI document is invalid: %v", err)
	}
	return doc
}

// Operations returns doc's operations by "METHOD /path".
func Operations(doc *openapi3.T) map[string]*openapi3.Operation {
	out := map[string]*openapi3.Operation{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			out[method+" "+path] = op
		}
	}
	return out
}

// Answer is one real request and the server's answer to it.
type Answer struct {
	Op          string // the operation: "GET /v1/users/{id}"
	Path, Query string // the request's
	ReqType     string // the request's Content-Type ("" without a body)
	ReqBody     []byte
	Status      int
	Header      http.Header
	Body        []byte
}

// Checker sends requests to a server and validates every answer against
// Doc, keeping them in Answers. Not safe for concurrent use.
type Checker struct {
	Doc     *openapi3.T
	Base    string // "http://127.0.0.1:PORT"
	Answers []Answer
}

// New returns a Checker for the server at base, with the document it
// serves at /openapi.json.
func New(tb testing.TB, base string) *Checker {
	tb.Helper()
	resp, err := http.Get(base + "/openapi.json")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		tb.Fatalf("GET /openapi.json: %d %v", resp.StatusCode, err)
	}
	return &Checker{Doc: Load(tb, raw), Base: base}
}

// CSV is a request body sent as text/csv; Form, as a form
// (application/x-www-form-urlencoded).
type (
	CSV  string
	Form string
)

// Call sends a request for the operation op ("POST /v1/users") to path
// (with its query, if any), with the admin token tok ("" for none) and
// body: nil for none, a string sent as it is (JSON), CSV, Form, or a
// value sent as JSON. The answer must have the status want and be one the
// document allows (Send). It returns the answer's JSON object, if it is
// one.
func (c *Checker) Call(tb testing.TB, op, path, tok string, body any, want int) map[string]any {
	tb.Helper()
	var raw []byte
	ctype := "application/json"
	switch b := body.(type) {
	case nil:
		ctype = ""
	case string:
		raw = []byte(b)
	case CSV:
		raw, ctype = []byte(b), "text/csv"
	case Form:
		raw, ctype = []byte(b), "application/x-www-form-urlencoded"
	default:
		raw, _ = json.Marshal(b)
	}
	method, _, _ := strings.Cut(op, " ")
	req, err := http.NewRequest(method, c.Base+path, bytes.NewReader(raw))
	if err != nil {
		tb.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return c.Send(tb, op, req, raw, want)
}

// Send sends req (whose body is body) for the operation op; its answer
// must have the status want, and it must be one the document allows:
// a documented status (or the test fails), and headers and body that
// match the documented response; a 2xx answer's request must match the
// documented request too. It returns the answer's JSON object, if it is
// one.
func (c *Checker) Send(tb testing.TB, op string, req *http.Request, body []byte, want int) map[string]any {
	tb.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		tb.Fatal(err)
	}
	a := Answer{Op: op, Path: req.URL.Path, Query: req.URL.RawQuery, ReqType: req.Header.Get("Content-Type"), ReqBody: body,
		Status: resp.StatusCode, Header: resp.Header, Body: got}
	if resp.StatusCode != want {
		tb.Fatalf("%s (%s): %d %s; want %d", op, req.URL.RequestURI(), resp.StatusCode, got, want)
	}
	if err := Validate(c.Doc, a); err != nil {
		tb.Errorf("%s (%s) answered %d, which the document does not allow:\n%v\nbody: %s", op, req.URL.RequestURI(), a.Status, err, got)
	}
	c.Answers = append(c.Answers, a)
	var out map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		json.Unmarshal(got, &out)
	}
	return out
}

// Coverage returns how many answers were validated per operation, and
// which operations had a 2xx answer.
func (c *Checker) Coverage() (validated map[string]int, succeeded map[string]bool) {
	validated, succeeded = map[string]int{}, map[string]bool{}
	for _, a := range c.Answers {
		validated[a.Op]++
		succeeded[a.Op] = succeeded[a.Op] || a.Status/100 == 2
	}
	return validated, succeeded
}

// Validate checks a real answer against doc with kin-openapi: the answer
// always (openapi3filter.ValidateResponse, an undocumented status
// refused), and the request too when the answer is 2xx
// (ValidateRequest: what the server took, the document must take).
func Validate(doc *openapi3.T, a Answer) error {
	method, tmpl, _ := strings.Cut(a.Op, " ")
	item := doc.Paths.Value(tmpl)
	if item == nil || item.GetOperation(method) == nil {
		return fmt.Errorf("no operation %s in the document", a.Op)
	}
	params := map[string]string{}
	ts, ps := strings.Split(tmpl, "/"), strings.Split(a.Path, "/")
	if len(ts) != len(ps) {
		return fmt.Errorf("the path %s is not one of %s", a.Path, tmpl)
	}
	for i, s := range ts {
		if strings.HasPrefix(s, "{") {
			params[strings.Trim(s, "{}")] = ps[i]
		} else if s != ps[i] {
			return fmt.Errorf("the path %s is not one of %s", a.Path, tmpl)
		}
	}
	target := a.Path
	if a.Query != "" {
		target += "?" + a.Query
	}
	req := httptest.NewRequest(method, target, bytes.NewReader(a.ReqBody))
	if a.ReqType != "" {
		req.Header.Set("Content-Type", a.ReqType)
	}
	route := &routers.Route{Spec: doc, Path: tmpl, PathItem: item, Method: method, Operation: item.GetOperation(method)}
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	ctx := context.Background()
	if a.Status/100 == 2 {
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			return err
		}
		req.Body = io.NopCloser(bytes.NewReader(a.ReqBody))
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: a.Status, Header: a.Header, Options: opts}
	out.SetBodyBytes(a.Body)
	return openapi3filter.ValidateResponse(ctx, out)
}
