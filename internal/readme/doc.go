// Package readme has no code: its test runs the README's tour (every
// ```sh block from "A two-minute tour" up to "What it guarantees", in
// order, in one bash shell) against real dingd processes, so that the
// README cannot drift from what Ding does. See readme_test.go for the
// conventions a block may use.
package readme
