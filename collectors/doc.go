// Package collectors turns HAL readings into telemetry points and events on
// a schedule. Each collector lives in its own file behind the Collector
// interface and is registered explicitly with a Scheduler, which runs each on
// its own jittered interval with a timeout, never overlapping itself, and
// keeps each one's run time and last error (the agent collector reports
// them). State changes (link, tunnel, SMART, filesystem, process) are events,
// sent when seen and rate limited per subject. The heartbeat is sent by the
// scheduler too, since it summarises the collectors' health.
package collectors
