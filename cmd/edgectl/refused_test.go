package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// TestRefusedMessageIsCountedAndRaised publishes to edgectl's embedded
// broker a flush whose string table is not UTF-8 (as an agent that let a
// StatsD name through would): GET /api/stats counts it by reason and node,
// 'edgectl events' shows a warning about it, and the log names node, topic
// and seq. Before, only undecodable envelopes were counted: the flush was
// lost without a trace.
func TestRefusedMessageIsCountedAndRaised(t *testing.T) {
	api, mqttAddr := testenv.FreePort(t), testenv.FreePort(t)
	_, ctlLog := start(t, edgectlBin, "serve", "--http", api, "--mqtt", mqttAddr)

	var e telemetry.Encoder
	data, err := e.Encode(telemetry.Header{Node: "bad-node", Seq: 77, Time: time.Now(), Kind: telemetry.KindBatch},
		[]telemetry.Batch{{Source: "statsd", Time: time.Now(), Points: []telemetry.Point{{Name: "app.##", Value: 1}}}})
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte("app.##"), []byte("app.\xff\xfe"), 1) // what the encoder would never write

	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + mqttAddr).SetClientID("bad-node").
		SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v\n%s", tok.Error(), ctlLog)
	}
	defer c.Disconnect(100)
	var stats controller.Stats
	testenv.WaitFor(t, 10*time.Second, func() bool {
		// Until the controller has subscribed, what is published is lost: publish again.
		c.Publish("edge/bad-node/telemetry", 1, false, data).WaitTimeout(time.Second)
		code, body := httpGet("http://" + api + "/api/stats")
		stats = controller.Stats{}
		return code == 200 && json.Unmarshal([]byte(body), &stats) == nil && stats.Refused > 0
	}, func() string { return fmt.Sprintf("stats %+v\n%s", stats, ctlLog) })
	if stats.RefusedByReason[controller.RefusedBody] == 0 || stats.RefusedByNode["bad-node"][controller.RefusedBody] == 0 {
		t.Errorf("stats %+v", stats)
	}
	out, err := exec.Command(edgectlBin, "events", "--server", "http://"+api).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "refused message 77 on edge/bad-node/telemetry (body)") {
		t.Errorf("events (%v):\n%s", err, out)
	}
	testenv.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(ctlLog.String(), `msg="message refused" reason=body node=bad-node topic=edge/bad-node/telemetry seq=77`)
	}, ctlLog.String)
}
