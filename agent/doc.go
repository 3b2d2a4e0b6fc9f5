// Package agent is the daemon's life: the order in which its parts start and
// stop, signals, the state directory and its lock, and (in later work) the local
// control socket, command dispatch and the service router.
//
// Operational notes: everything the agent writes lives under paths.state_dir;
// a second agent on the same state directory is refused (flock on
// edgeagent.lock, which also records the holder's pid). Cancelling the context
// given to Run is a clean shutdown, not an error.
package agent
