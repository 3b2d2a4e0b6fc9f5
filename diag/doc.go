// Package diag renders what a person sees on a node's serial console: plain
// text that fits 80 columns, no colour, no terminal control sequences.
package diag
