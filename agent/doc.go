// Package agent is the daemon's life: the order in which its parts start and
// stop, the state directory and its lock, the node id, the time floor, the
// health verdict, the local control socket (agent/router, the service
// router), command dispatch (agent/dispatch) and the status endpoint.
//
// Operational notes: everything the agent writes lives under paths.state_dir
// (and the spool and control socket paths, which default to it); a second
// agent on the same state directory is refused (flock on the directory; its
// pid is in edgeagent.lock). An optional part that is missing degrades the
// agent and never stops it; only what makes it useless returns ErrUnusable.
// Cancelling the context given to Run is a clean shutdown, not an error.
package agent
