package spool

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// A segment file is a sequence of frames:
//
//	uint32 length of body (little endian)
//	uint32 CRC32C of seq and body
//	uint64 sequence number
//	body: a Record, msgp-encoded
//
// A frame that is short, too long, or fails its CRC ends the valid part of a
// segment: a torn write at the tail after a power cut, or corruption.
const (
	headerSize = 16
	// MaxRecord bounds one record's body; a frame claiming more is corrupt.
	MaxRecord = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// frame is one record's place in a segment.
type frame struct {
	seq  uint64
	off  int64 // of the header
	size int64 // header and body
}

func appendFrame(b []byte, seq uint64, body []byte) []byte {
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(body)))
	binary.LittleEndian.PutUint64(h[8:], seq)
	crc := crc32.Update(crc32.Checksum(h[8:16], castagnoli), castagnoli, body)
	binary.LittleEndian.PutUint32(h[4:], crc)
	return append(append(b, h[:]...), body...)
}

// scanFrames returns the valid frames at the start of data and, when they do
// not cover all of it, why the rest is not valid.
func scanFrames(data []byte) ([]frame, int64, error) {
	var frames []frame
	off := 0
	for off < len(data) {
		rest := data[off:]
		if len(rest) < headerSize {
			return frames, int64(off), fmt.Errorf("offset %d: %d bytes, short of a frame header", off, len(rest))
		}
		n := binary.LittleEndian.Uint32(rest[0:])
		if n > MaxRecord {
			return frames, int64(off), fmt.Errorf("offset %d: frame claims %d bytes, more than %d", off, n, MaxRecord)
		}
		if len(rest) < headerSize+int(n) {
			return frames, int64(off), fmt.Errorf("offset %d: frame of %d bytes cut at %d", off, n, len(rest)-headerSize)
		}
		want := binary.LittleEndian.Uint32(rest[4:])
		if got := crc32.Update(crc32.Checksum(rest[8:16], castagnoli), castagnoli, rest[headerSize:headerSize+int(n)]); got != want {
			return frames, int64(off), fmt.Errorf("offset %d: CRC mismatch", off)
		}
		size := headerSize + int(n)
		frames = append(frames, frame{seq: binary.LittleEndian.Uint64(rest[8:]), off: int64(off), size: int64(size)})
		off += size
	}
	return frames, int64(off), nil
}
