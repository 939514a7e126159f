//go:build race

package engine

// raceBuild is true in race builds, which every `make test` is: the
// commit loop then also checks what is too costly to check in production
// (flushStates, rcptstate.go).
const raceBuild = true
