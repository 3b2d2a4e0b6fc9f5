// Package handoff owns the agent's listening sockets and the descriptors that
// must outlive one program image: it hands them out by name, keeps its own
// duplicate of each, and passes them all to the next image when the agent
// replaces itself in place (same pid, execve).
//
// Servers never open their own sockets: the wiring asks the [Registry] for a
// listener by name and gets the one this process inherited (the systemd
// convention: LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID; descriptors from 3 on)
// when its type, family and address match what is asked for, or else a
// freshly bound one. The same code accepts socket activation.
//
// # A reload, in order
//
// The old image: [FromEnv] first (before any child is started), then
// [Registry.PacketConn], [Registry.Listener] and [Registry.Keep] (the state
// directory's flock'd descriptor), and serve. To reload: stop the servers,
// flush what must be flushed, and call [Registry.Exec] last. The new image,
// in the same process: [FromEnv], [Registry.File] for the lock (the flock is
// never released: the open file is the same), the same PacketConn and
// Listener calls, then [Registry.Close] for what the new configuration no
// longer has. Datagrams and connections that arrive meanwhile wait in the
// sockets' queues: the kernel sockets never close. A stop that is not a
// reload ends with [Registry.Stop].
//
// # Operational notes
//
//   - Exec moves the passed descriptors to 3, 4, …, overwriting what this
//     process had there (in a first image: the runtime's cgroup files, the
//     caller's files). From then on the process cannot go on: if execve fails,
//     Exec writes the reason to stderr and exits with [ExecFailedStatus], for
//     the init system to restart the agent. A failure before that (the
//     pre-flight, a descriptor that cannot be copied) is returned and the
//     process goes on.
//   - Exec never overwrites the runtime's epoll instance or eventfd: threads
//     that run no Go code poll with them until execve ends them, and an
//     overwritten one makes the runtime throw ("netpoll failed"; 35 of 1000
//     busy processes died so). It passes them where they are, as fillers named
//     handoff.filler.N that FromEnv closes.
//   - After the first reload the passed descriptors stay at 3, 4, … (the
//     registry keeps what it inherited where it is), so a later Exec moves
//     little unless the set of sockets grew.
//   - Closing a unix listener leaves its file, which the next image serves
//     on. Stop removes the files of the unix sockets that an image of this
//     program bound (HANDOFF_UNLINK carries which across an exec); the files
//     of sockets systemd passed are systemd's.
//   - FromEnv sets close-on-exec on every descriptor above 2, announced or
//     not, so nothing a parent or an earlier image leaked reaches a plugin or
//     the next image; Exec clears it on the passed descriptors only, holding
//     syscall.ForkLock, so no child started meanwhile inherits them.
//   - A socket goes unread across Exec for about 2 ms (go test -bench ExecGap:
//     from the old image's last read to the new one's first, static test
//     binary of 6 MB; the agent starts about 1.5 ms slower).
package handoff
