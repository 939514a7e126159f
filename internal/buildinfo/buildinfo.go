// Package buildinfo tells which build of Ding a binary is: its module
// version and the VCS revision it was built from (debug.ReadBuildInfo),
// for --version.
package buildinfo

import (
	"fmt"
	"runtime/debug"
)

// String is "NAME VERSION (revision REV[, modified], GOVERSION)", with
// "unknown" for what the binary does not record (a go test binary, a
// build outside a VCS checkout).
func String(name string) string {
	version, rev, modified, gover := "unknown", "unknown", false, "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		gover = bi.GoVersion
		if v := bi.Main.Version; v != "" {
			version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if modified {
		rev += ", modified"
	}
	return fmt.Sprintf("%s %s (revision %s, %s)", name, version, rev, gover)
}
