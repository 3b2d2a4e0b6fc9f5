// Package update is the A/B self-upgrade. Two slots under paths.slots_dir
// hold downloaded binaries beside the factory binary that init starts; a
// durable state file records the committed slot, a version on trial with
// its attempts, the highest version ever committed and the last rollback.
//
// Decide, the first thing every start does, picks the binary that should
// run. A Manager carries out the controller's offers (verify the signed
// manifest with update/release, download with update/fetch into the
// inactive slot, verify the binary, pre-flight it, switch through the
// agent's seamless reload) and judges a version on trial: commit when it
// is healthy within its deadline, roll back when not. A watchdog process
// guards a version that hangs. update/handoff passes the listening
// sockets to the next image. docs/upgrades.md draws the state machine.
package update
