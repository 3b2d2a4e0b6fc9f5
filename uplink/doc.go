// Package uplink is the node's MQTT session to the controller: broker failover,
// TLS, topics, QoS, the retained state and last will, and backoff. Telemetry
// that cannot be published goes to the durable store-and-forward queue in
// uplink/spool, which is the source of truth until the broker acknowledges.
package uplink
