package main

// The config file is TOML with one top-level key per setting, named as the
// flag:
//
//	data = "/var/lib/ding"
//	http = "127.0.0.1:7080"
//	max-body = 65536
//	drain-timeout = "15s"
//	no-call-fallback = true
//
// Strings, integers and booleans are TOML's own; durations are strings in
// Go's syntax ("15s", "5m"). An unknown key, a table, or a value of the
// wrong type is an error that names the file, line, column and key (a
// string that is no duration: the file and key).
// --print-config writes the same format, so its output loads back.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// fileType is a struct with one pointer field per setting, tagged with the
// setting's name: the decoder then rejects unknown keys and wrong types
// with their position, and a nil field is a key the file does not set.
// Durations are strings in it.
// Built from the table, so the file cannot drift from the flags.
func fileType() reflect.Type {
	fields := make([]reflect.StructField, len(settings))
	for i := range settings {
		t := reflect.TypeOf(settings[i].field(new(config))).Elem()
		if t == reflect.TypeFor[time.Duration]() {
			// A string, parsed below: go-toml hands a TextUnmarshaler the
			// digits of a TOML integer too, and reports its error without
			// a position.
			t = reflect.TypeFor[string]()
		}
		fields[i] = reflect.StructField{
			Name: "F" + strconv.Itoa(i),
			Type: reflect.PointerTo(t),
			Tag:  reflect.StructTag(fmt.Sprintf("toml:%q", settings[i].name)),
		}
	}
	return reflect.StructOf(fields)
}

// loadFile sets in c the settings that the TOML file at path gives.
func loadFile(c *config, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	v := reflect.New(fileType())
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v.Interface()); err != nil {
		return fileError(path, err)
	}
	for i := range settings {
		f := v.Elem().Field(i)
		if f.IsNil() {
			continue
		}
		s := &settings[i]
		switch p := s.field(c).(type) {
		case *time.Duration:
			v := f.Elem().String()
			d, err := parseDuration(v)
			if err != nil { // the decoder has no position for this one
				return fmt.Errorf("%s: %s: %s, not %q", path, s.name, s.want(), v)
			}
			*p = d
		default:
			reflect.ValueOf(p).Elem().Set(f.Elem())
		}
		c.from[s.name] = fromFile
		if s.holdsSecret(c) {
			if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
				c.warnings = append(c.warnings, fmt.Sprintf(
					"config file %s holds %s and others may read it (mode %v): chmod 600 it, or use the environment (%s)",
					path, s.name, fi.Mode().Perm(), s.env))
			}
		}
	}
	return nil
}

var tomlTypeRE = regexp.MustCompile(`cannot decode TOML (\w+)`)

// fileError turns a decoder error into one line: file:line:col: key: what.
func fileError(path string, err error) error {
	var sme *toml.StrictMissingError
	if errors.As(err, &sme) {
		msgs := make([]string, len(sme.Errors))
		for i, e := range sme.Errors {
			row, col := e.Position()
			msgs[i] = fmt.Sprintf("%s:%d:%d: unknown key %q", path, row, col, strings.Join(e.Key(), "."))
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		msg := strings.ReplaceAll(strings.TrimPrefix(de.Error(), "toml: "), "\n", " ")
		key := strings.Join(de.Key(), ".")
		if s := lookupSetting(key); s != nil {
			if m := tomlTypeRE.FindStringSubmatch(msg); m != nil {
				msg = fmt.Sprintf("%s, not a TOML %s", s.want(), m[1])
			}
		}
		if key != "" {
			msg = key + ": " + msg
		}
		return fmt.Errorf("%s:%d:%d: %s", path, row, col, msg)
	}
	return fmt.Errorf("%s: %w", path, err)
}

// printConfig writes c in the config file's format: every setting with its
// effective value (200, not the 0 that stands for it), secrets redacted,
// and where the value came from.
func printConfig(w io.Writer, c *config) error {
	fmt.Fprintf(w, "# dingd --print-config: the effective configuration, in dingd --config format.\n")
	fmt.Fprintf(w, "# Each comment says where the value came from: default, file, env or flag.\n")
	if c.File != "" {
		fmt.Fprintf(w, "# config file: %s\n", c.File)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for i := range settings {
		s := &settings[i]
		src := string(c.from[s.name])
		if c.from[s.name] == fromEnv {
			src += " " + s.env
		}
		v := tomlValue(s, c)
		switch {
		case s.effective != "" && s.isZero(c):
			v = tomlEffective(s)
		case s.zero != "" && s.isZero(c):
			src += ", which means " + s.zero
		}
		fmt.Fprintf(tw, "%s = %s\t# %s\n", s.name, v, src)
	}
	return tw.Flush()
}

// tomlValue is s's value in c as a TOML value; a secret that is set is
// redacted.
func tomlValue(s *setting, c *config) string {
	switch p := s.field(c).(type) {
	case *string:
		if s.secret && *p != "" {
			return tomlString(redacted)
		}
		if s.redact != nil && *p != "" {
			return tomlString(s.redact(*p))
		}
		return tomlString(*p)
	case *time.Duration:
		return tomlString(p.String())
	}
	return s.format(c) // integers and booleans are written alike in TOML
}

// tomlEffective is the value s's zero stands for as a TOML value.
func tomlEffective(s *setting) string {
	if _, ok := s.field(new(config)).(*int); ok {
		return s.effective
	}
	return tomlString(s.effective) // a string or a duration
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
