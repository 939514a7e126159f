// Package layout has no code: its test enforces the architecture's import
// rules (see ../../README.md, "Layout").
package layout
