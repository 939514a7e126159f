// Package buildinfo tells which build of Ding a binary is: its module
// version and the VCS revision it was built from (debug.ReadBuildInfo),
// for --version, the ding_build_info metric and a cluster member's
// status (which build each member runs during a rolling upgrade).
package buildinfo

import (
	"fmt"
	"runtime/debug"
)

// Info is what a binary records of its build; "unknown" for what it does
// not (a go test binary, a build outside a VCS checkout).
type Info struct {
	Version   string // the main module's version ("(devel)" for a build from a checkout)
	Revision  string // the VCS revision, in full
	Modified  bool   // built from a checkout with uncommitted changes
	GoVersion string
}

// Read returns this binary's Info.
func Read() Info {
	in := Info{Version: "unknown", Revision: "unknown", GoVersion: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	in.GoVersion = bi.GoVersion
	if v := bi.Main.Version; v != "" {
		in.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// Build is the short name of the build: the revision's first 12
// characters, "+modified" after it for a checkout with uncommitted
// changes ("unknown" when not recorded).
func (in Info) Build() string {
	b := in.Revision[:min(12, len(in.Revision))]
	if in.Modified {
		b += "+modified"
	}
	return b
}

// String is "NAME VERSION (revision REV[, modified], GOVERSION)".
func String(name string) string {
	in := Read()
	rev := in.Revision
	if in.Modified {
		rev += ", modified"
	}
	return fmt.Sprintf("%s %s (revision %s, %s)", name, in.Version, rev, in.GoVersion)
}
