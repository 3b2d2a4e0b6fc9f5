// Package wiretest checks, for tests, that what the agent sends is what the
// controller takes: a message encoded as the uplink encodes it
// (telemetry.Encoder), handed to the controller's own ingest
// (controller.Fleet.Handle), whose strict decoder refuses a string that is
// not valid UTF-8, and with it the whole message; the random bytes to put
// where the agent reads names; and a check that what a reader returns is text.
package wiretest

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/seed69aca190/edgeagent/controller"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// topics are where the agent publishes each kind (under edge/<node>/).
var topics = map[telemetry.Kind]string{
	telemetry.KindBatch: "telemetry", telemetry.KindHeartbeat: "heartbeat", telemetry.KindEvent: "event",
	telemetry.KindState: "state", telemetry.KindCommandResult: "cmd/result",
}

// Send encodes body, of the Go type kind names ([]telemetry.Batch for a
// batch), as a message of node "n", hands it to a controller, and fails t
// when the controller refuses it. It returns how many strings the encoder
// had to escape: 0 when every string was text before it reached the uplink,
// as the readers' boundaries promise.
func Send(t testing.TB, kind telemetry.Kind, body any) (escaped uint64) {
	t.Helper()
	var e telemetry.Encoder
	data, err := e.Encode(telemetry.Header{Node: "n", Seq: 1, Time: time.Now(), Kind: kind, Instance: "i"}, body)
	if err != nil {
		t.Fatalf("encode %s: %v", kind, err)
	}
	if err := controller.NewFleet(controller.Options{}).Handle("edge/n/"+topics[kind], data, time.Now()); err != nil {
		t.Fatalf("the controller refused %+v: %v", body, err)
	}
	return e.Escaped()
}

// Bytes a name cannot hold, for Junk: a file's, and a network link's (the
// kernel's dev_valid_name refuses '/', ':' and white space, 0xa0 among it,
// and numbers a name with '%' in it).
const (
	NotInFileName = "/\x00"
	NotInLinkName = "/:%\x00 \t\n\v\f\r\xa0"
)

// Junk returns n random bytes, none of them in avoid, most often not valid
// UTF-8: what a name the kernel, a drive or a daemon passes on may hold.
func Junk(r *rand.Rand, n int, avoid string) string {
	b := make([]byte, 0, n)
	for len(b) < n {
		if c := byte(r.UintN(256)); strings.IndexByte(avoid, c) < 0 {
			b = append(b, c)
		}
	}
	return string(b)
}

// InvalidText returns where the first string in v that is not valid UTF-8
// is, such as `[0].Filesystems[1].MountPoint = "/mnt/\xff"`, or "" when
// every string is text, as what a reader returns must be. v is followed
// through structs, pointers, slices, arrays and maps (keys too).
func InvalidText(v any) string {
	return invalidText(reflect.ValueOf(v), "")
}

func invalidText(v reflect.Value, at string) string {
	switch v.Kind() {
	case reflect.String:
		if !utf8.ValidString(v.String()) {
			return fmt.Sprintf("%s = %q", at, v.String())
		}
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			return invalidText(v.Elem(), at)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				if bad := invalidText(v.Field(i), at+"."+v.Type().Field(i).Name); bad != "" {
					return bad
				}
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			if bad := invalidText(v.Index(i), fmt.Sprintf("%s[%d]", at, i)); bad != "" {
				return bad
			}
		}
	case reflect.Map:
		for it := v.MapRange(); it.Next(); {
			if bad := invalidText(it.Key(), at+" key"); bad != "" {
				return bad
			}
			if bad := invalidText(it.Value(), fmt.Sprintf("%s[%v]", at, it.Key())); bad != "" {
				return bad
			}
		}
	}
	return ""
}
