// Package update is to hold the A/B self-upgrade: slots, signed manifest
// verification, artifact download into the inactive slot, the health check,
// commit and automatic rollback. None of that exists yet (paths.slots_dir and
// the heartbeat's slot are unused until it does); what exists is
// update/handoff, which passes listening sockets by name to the next process
// (LISTEN_FDS / LISTEN_FDNAMES), and through which every listener of the
// agent is obtained already.
package update
