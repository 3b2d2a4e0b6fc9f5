package nic

import "time"

// Change names what happened to a link.
type Change string

const (
	LinkAdded      Change = "added"
	LinkRemoved    Change = "removed"
	AdminUp        Change = "admin-up"
	AdminDown      Change = "admin-down"
	CarrierUp      Change = "carrier-up"
	CarrierLost    Change = "carrier-lost"
	OperChanged    Change = "oper-state"
	AddressAdded   Change = "address-added"
	AddressRemoved Change = "address-removed"
	// Resynced: the netlink socket overran and notifications were lost; the
	// links were listed again and the events that follow it are the
	// differences found.
	Resynced Change = "resync"
)

// Event is one change to a link, with its state before and after.
type Event struct {
	Time    time.Time `json:"time"`
	Link    string    `json:"link"`
	Index   int       `json:"index"`
	Change  Change    `json:"change"`
	Old     string    `json:"old,omitempty"` // oper state before, for link changes
	New     string    `json:"new,omitempty"` // oper state after; the address, for address changes
	Message string    `json:"message"`
}

// WatchOptions tune Watch; the zero value is right for the agent.
type WatchOptions struct {
	// ReceiveBuffer is the netlink socket's buffer size in bytes; zero keeps
	// the kernel's default. Tests make it small to force an overrun.
	ReceiveBuffer int
}
