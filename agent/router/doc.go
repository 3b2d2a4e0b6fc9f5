// Package router is the local service router: daemons on the node register
// with the agent over its unix control socket under a name, keep the
// registration alive with heartbeats, and answer calls that the controller
// addresses to them (the service.call command). The wire format is in
// wire.go; Register and KeepRegistered are the Go client.
//
// A reload hands the control socket to the agent's next image without a
// deregistration: Handover stops the router, leaves the listener open with
// its path in place and returns the registered services; the agent carries
// them across exec and gives them to the new image's router with Restore
// before it serves. Every connection ends with the old image, so each
// service connects and registers again (KeepRegistered does that by
// itself); until it does, Services lists it as reconnecting and calls to it
// wait for it. One that is not back within its grace (five seconds or three
// of its heartbeat intervals, whichever is longer) is deregistered with an
// event, as a lost service always is.
package router
