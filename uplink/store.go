package uplink

import (
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// nullStore keeps nothing: the spool, not paho, holds what is unacknowledged
// and re-sends it after a reconnect. With paho's own store the same record
// would be resent twice, and paho's copy would not survive a restart anyway.
type nullStore struct{}

var _ mqtt.Store = nullStore{}

func (nullStore) Open()                             {}
func (nullStore) Put(string, packets.ControlPacket) {}
func (nullStore) Get(string) packets.ControlPacket  { return nil }
func (nullStore) All() []string                     { return nil }
func (nullStore) Del(string)                        {}
func (nullStore) Close()                            {}
func (nullStore) Reset()                            {}
