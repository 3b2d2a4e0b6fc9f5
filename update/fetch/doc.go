// Package fetch downloads a release's artifact over HTTP into a file,
// streaming it through SHA-256, and resumes it with a Range request after a
// cut, an agent restart or a power cut.
//
// Operational notes:
//
//   - Memory does not grow with the artifact: one fixed buffer carries it
//     from the socket to the file and the hash.
//   - The partial file is the destination itself. Beside it, <dest>.resume
//     records the offset up to which the file was last fsynced (every 8 MiB
//     or second, and when Download returns an error), written durably; a
//     restart truncates the file there and hashes what it keeps from disk.
//     A power cut thus costs at most the bytes fetched since the last sync.
//   - A resumed request carries If-Range with the server's ETag (or
//     Last-Modified), so an artifact replaced on the server is fetched again
//     from the start rather than spliced; a server that ignores Range, or
//     answers another range than asked, is also read again from byte 0.
//   - There is no total timeout, which would kill slow links: a transfer is
//     given up as stalled when no byte arrives for Options.IdleTimeout.
//   - The sum covers the whole file; comparing it with the manifest is the
//     caller's job, as is Discard when it refuses the result.
package fetch
