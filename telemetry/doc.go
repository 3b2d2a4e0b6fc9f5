// Package telemetry is the wire schema shared by the agent and the controller:
// Go types with CBOR tags, the CDDL document that describes them, and the codec
// options (strict and bounded for anything read from the network). It is a leaf:
// it imports nothing of edgeagent but internal/text, whose rule its encoder
// applies to any string that is not valid UTF-8.
package telemetry
