// Package update is the A/B self-upgrade: slots, signed manifest verification,
// artifact download into the inactive slot, the health check, commit and
// automatic rollback. update/handoff passes listening sockets by name to the
// next process (LISTEN_FDS / LISTEN_FDNAMES) so no connection or packet is lost.
package update
