package router

import (
	"encoding/binary"
	"fmt"
	"io"
)

// maxFrame bounds one message on the control socket.
const maxFrame = 1 << 20

func writeFrame(w io.Writer, f *Frame) error {
	body, err := f.MarshalMsg(make([]byte, 4, 64))
	if err != nil {
		return err
	}
	if len(body)-4 > maxFrame {
		return fmt.Errorf("message of %d bytes exceeds %d", len(body)-4, maxFrame)
	}
	binary.BigEndian.PutUint32(body, uint32(len(body)-4))
	_, err = w.Write(body)
	return err
}

func readFrame(r io.Reader) (Frame, error) {
	var f Frame
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return f, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxFrame {
		return f, fmt.Errorf("message claims %d bytes, more than %d", size, maxFrame)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return f, err
	}
	if _, err := f.UnmarshalMsg(body); err != nil {
		return f, fmt.Errorf("malformed message: %w", err)
	}
	return f, nil
}
