//go:build !linux

package nic

import (
	"context"
	"errors"
	"fmt"
)

// Reader reads links through netlink, which only Linux has.
type Reader struct{}

// Open fails: netlink is Linux's.
func Open(Options) (*Reader, error) {
	return nil, fmt.Errorf("open netlink: %w", errors.ErrUnsupported)
}

// Close does nothing.
func (*Reader) Close() error { return nil }

// Links fails: netlink is Linux's.
func (*Reader) Links() ([]Link, error) { return nil, errors.ErrUnsupported }

// Watch fails: netlink is Linux's.
func (*Reader) Watch(context.Context, chan<- Event, WatchOptions) error { return errors.ErrUnsupported }
