package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// IngestOptions configure the controller's MQTT client.
type IngestOptions struct {
	Broker   string // URL
	ClientID string
	// Share, when set, subscribes through $share/<Share>/… so that several
	// controllers split the ingest of a clustered broker.
	Share       string
	TopicPrefix string
	Fleet       *Fleet
	Log         *slog.Logger
}

// kinds the controller ingests: everything a node publishes.
var ingestTopics = []string{"telemetry", "heartbeat", "event", "state", "cmd/result", "update/status"}

// Ingest feeds the fleet from the broker until ctx is cancelled, and checks
// heartbeat deadlines every second. The paho handler only queues; decoding
// happens here, so a slow message never stalls the client.
func Ingest(ctx context.Context, o IngestOptions) error {
	type message struct {
		topic   string
		payload []byte
	}
	in := make(chan message, 1024)
	opts := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(o.ClientID).SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(10 * time.Second).SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).SetOrderMatters(false)
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		filters := map[string]byte{}
		for _, k := range ingestTopics {
			f := o.TopicPrefix + "/+/" + k
			if o.Share != "" {
				f = "$share/" + o.Share + "/" + f
			}
			filters[f] = 1
		}
		c.SubscribeMultiple(filters, func(_ mqtt.Client, m mqtt.Message) {
			select {
			case in <- message{m.Topic(), m.Payload()}:
			default:
				o.Log.Warn("ingest queue full; message dropped", "topic", m.Topic())
			}
		})
		o.Log.Info("controller subscribed", "broker", o.Broker)
	})
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) { o.Log.Warn("broker connection lost", "err", err) })
	client := mqtt.NewClient(opts)
	client.Connect() // retries in the background until it connects
	defer client.Disconnect(250)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-in:
			if err := o.Fleet.Handle(m.topic, m.payload, time.Now()); err != nil {
				o.Log.Warn("message refused", "topic", m.topic, "err", err)
			}
		case now := <-tick.C:
			o.Fleet.Check(now)
		}
	}
}

// API serves the fleet view as JSON:
//
//	GET /api/nodes                       every node
//	GET /api/events?after=ID&wait=30s    events newer than ID, waiting up to wait for one
func API(f *Fleet) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/nodes", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, f.Nodes())
	})
	mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) {
		after, err := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		if err != nil && r.URL.Query().Has("after") {
			http.Error(w, "after: want an event id", http.StatusBadRequest)
			return
		}
		wait, err := time.ParseDuration(r.URL.Query().Get("wait"))
		if err != nil && r.URL.Query().Has("wait") {
			http.Error(w, "wait: want a duration such as 30s", http.StatusBadRequest)
			return
		}
		events, changed := f.Events(after)
		if len(events) == 0 && wait > 0 {
			select {
			case <-changed:
				events, _ = f.Events(after)
			case <-time.After(min(wait, time.Minute)):
			case <-r.Context().Done():
			}
		}
		writeJSON(w, events)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		fmt.Fprintln(w, err)
	}
}
