package uplink

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/seed69aca190/edgeagent/internal/testenv"
	"github.com/seed69aca190/edgeagent/telemetry"
)

// pki makes a CA and certificates signed by it, written as PEM files in dir.
type pki struct {
	dir  string
	ca   *x509.Certificate
	key  *ecdsa.PrivateKey
	next int64
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir(), next: 2}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edgeagent test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.key = key
	p.write(t, "ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue makes a certificate for cn (a server when server is true) and returns
// the certificate and key paths.
func (p *pki) issue(t *testing.T, cn string, server bool) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(p.next), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	p.next++
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	return p.write(t, cn+".pem", "CERTIFICATE", der), p.write(t, cn+".key", "EC PRIVATE KEY", keyDER)
}

// tlsBroker starts mosquitto with client certificates required, the
// certificate's CN as the identity, and the ACL shipped in docs/.
func tlsBroker(t *testing.T, p *pki) *testenv.Mosquitto {
	t.Helper()
	cert, key := p.issue(t, "broker", true)
	acl, err := filepath.Abs("../docs/mosquitto-acl.example")
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("listener %%s 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n"+
		"use_identity_as_username true\nacl_file %s\n", filepath.Join(p.dir, "ca.pem"), cert, key, acl)
	m := testenv.StartMosquitto(t, conf)
	m.URL = "ssl://" + m.Addr
	return m
}

// certClient connects a plain paho client with cn's certificate. conn
// receives the TLS connection, so a test can break it without DISCONNECT.
func certClient(t *testing.T, p *pki, brokerURL, cn string, will func(*mqtt.ClientOptions)) (mqtt.Client, *net.Conn, error) {
	t.Helper()
	cert, key := p.issue(t, cn, false)
	conf, err := tlsConfig(Options{CAFile: filepath.Join(p.dir, "ca.pem"), CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn
	opts := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID(cn).SetCleanSession(true).
		SetCustomOpenConnectionFn(func(uri *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			c, err := tls.Dial("tcp", uri.Host, conf)
			conn = c
			return c, err
		})
	if will != nil {
		will(opts)
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatalf("%s connect timed out", cn)
	}
	return c, &conn, tok.Error()
}

// TestTLSAndACLConfineEachNode runs the agent's uplink over TLS with a client
// certificate against mosquitto with the shipped ACL, and checks that another
// node can neither publish into node-a's subtree nor leave its last will there.
func TestTLSAndACLConfineEachNode(t *testing.T) {
	p := newPKI(t)
	m := tlsBroker(t, p)

	// The controller reads everything.
	got := make(chan string, 100)
	ctl, _, err := certClient(t, p, m.URL, "edgectl", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Disconnect(100)
	if tok := ctl.Subscribe("edge/#", 1, func(_ mqtt.Client, msg mqtt.Message) {
		env, err := telemetry.Decode(msg.Payload())
		node := "?"
		if err == nil {
			node = env.Node
		}
		got <- msg.Topic() + " from " + node
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	// node-a's uplink over TLS with its certificate.
	cert, key := p.issue(t, "node-a", false)
	u, _ := newUplink(t, m.URL, t.TempDir(), func(o *Options) {
		o.CAFile, o.CertFile, o.KeyFile = filepath.Join(p.dir, "ca.pem"), cert, key
	})
	run(t, u)
	u.Event(telemetry.Event{Time: time.Now(), Severity: telemetry.Info, Kind: "test", Subject: "tls", New: "n", Message: "over TLS"})
	want := map[string]bool{"edge/node-a/state from node-a": false, "edge/node-a/event from node-a": false}
	deadline := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case s := <-got:
			if _, ok := want[s]; ok {
				want[s] = true
			}
			done = want["edge/node-a/state from node-a"] && want["edge/node-a/event from node-a"]
		case <-deadline:
			t.Fatalf("node-a's messages over TLS did not arrive: %v\n%s", want, m.Log.String())
		}
	}

	// node-b tries to speak for node-a, and to leave a last will in its subtree.
	var e telemetry.Encoder
	spoof, _ := e.Encode(telemetry.Header{Node: "node-a", Seq: 999999, Time: time.Now(), Kind: telemetry.KindState}, telemetry.State{State: "offline"})
	spoof = append([]byte(nil), spoof...)
	b, conn, err := certClient(t, p, m.URL, "node-b", func(o *mqtt.ClientOptions) {
		o.SetBinaryWill("edge/node-a/state", spoof, 1, true)
	})
	if err != nil {
		t.Logf("node-b with a will on node-a's topic was refused at connect: %v", err)
	} else {
		for _, topic := range []string{"edge/node-a/state", "edge/node-a/telemetry", "edge/edgectl/cmd", "edge/node-a/cmd"} {
			b.Publish(topic, 1, false, spoof).WaitTimeout(5 * time.Second)
		}
		// Break the connection without DISCONNECT: the broker would now send the will.
		(*conn).Close()
	}
	// node-b in its own subtree is fine: proof that the ACL is what refused the rest.
	own, _, err := certClient(t, p, m.URL, "node-b", nil)
	if err != nil {
		t.Fatal(err)
	}
	own.Publish("edge/node-b/event", 1, false, spoof).WaitTimeout(5 * time.Second)
	own.Disconnect(100)

	timeout := time.After(3 * time.Second)
	ownSeen := false
	for {
		select {
		case s := <-got:
			switch {
			case s == "edge/node-b/event from node-a":
				ownSeen = true
			case strings.HasPrefix(s, "edge/node-a/") || strings.HasPrefix(s, "edge/edgectl/"):
				t.Fatalf("node-b got through: %s", s)
			}
		case <-timeout:
			if !ownSeen {
				t.Error("node-b's publish in its own subtree did not arrive; the test proves nothing")
			}
			return
		}
	}
}
