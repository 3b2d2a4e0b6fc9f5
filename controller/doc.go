// Package controller is the fleet side used by edgectl: the registry of nodes,
// heartbeat deadlines and alerts, command requests and upgrade rollouts. It
// speaks the same wire schema as the agent (package telemetry).
package controller
