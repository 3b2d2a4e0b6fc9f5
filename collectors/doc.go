// Package collectors runs the periodic samplers that turn HAL readings into
// telemetry points and events: host utilization, disks, NICs, tunnels, process
// health and the agent itself, each on its own jittered interval. The embedded
// StatsD server for the node's own daemons lives in collectors/statsd.
package collectors
