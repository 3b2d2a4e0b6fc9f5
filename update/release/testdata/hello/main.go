// Command hello is the smallest Go program: the tests cross-compile it to
// read the targets of real binaries.
package main

func main() {}
