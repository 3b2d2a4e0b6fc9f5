package release

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "release.key")
	pubKey, err := GenerateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	for file, mode := range map[string]os.FileMode{path: 0o600, path + ".pub": 0o644} {
		if st, err := os.Stat(file); err != nil || st.Mode().Perm() != mode&^umask(t) {
			t.Errorf("%s: %v, %v; want mode %v", file, st.Mode(), err, mode)
		}
	}
	priv, err := LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := LoadPublicKeys(path + ".pub")
	if err != nil || len(keys) != 1 || !keys[0].Equal(pubKey) || !pub(priv).Equal(pubKey) {
		t.Fatalf("loaded %v, %v; want the generated key", keys, err)
	}
	if _, err := GenerateKey(path); err == nil {
		t.Error("GenerateKey overwrote an existing key")
	}

	// One file may hold the whole trusted list.
	second := filepath.Join(dir, "second.key")
	pub2, err := GenerateKey(second)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(path + ".pub")
	b, _ := os.ReadFile(second + ".pub")
	list := filepath.Join(dir, "trusted.pub")
	os.WriteFile(list, append(append(a, "# the new key, from 2027\n"...), b...), 0o644)
	keys, err = LoadPublicKeys(list)
	if err != nil || len(keys) != 2 || !keys[0].Equal(pubKey) || !keys[1].Equal(pub2) {
		t.Errorf("trusted list: %v, %v", keys, err)
	}

	if openssl, err := exec.LookPath("openssl"); err == nil {
		for _, args := range [][]string{{"-in", path}, {"-pubin", "-in", path + ".pub"}} {
			if out, err := exec.Command(openssl, append([]string{"pkey", "-noout"}, args...)...).CombinedOutput(); err != nil {
				t.Errorf("openssl pkey %v: %v\n%s", args, err, out)
			}
		}
		// And a key openssl made is read as well.
		made := filepath.Join(dir, "openssl.key")
		if out, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519", "-out", made).CombinedOutput(); err != nil {
			t.Fatalf("openssl genpkey: %v\n%s", err, out)
		}
		if _, err := LoadPrivateKey(made); err != nil {
			t.Errorf("a key from openssl genpkey: %v", err)
		}
	} else {
		t.Log("no openssl: its reading of the key files was not checked")
	}
}

func umask(t *testing.T) os.FileMode {
	f := filepath.Join(t.TempDir(), "probe")
	os.WriteFile(f, nil, 0o777)
	st, _ := os.Stat(f)
	return 0o777 &^ st.Mode().Perm()
}

func TestKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o600)
		return p
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecPubDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	good := filepath.Join(dir, "good.key")
	if _, err := GenerateKey(good); err != nil {
		t.Fatal(err)
	}
	goodPub, _ := os.ReadFile(good + ".pub")

	ecPriv := write("ec.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}))
	ecPub := write("ec.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecPubDER}))
	text := write("notes.txt", []byte("not a key"))
	big := write("big.pub", make([]byte, maxKeyFile+1))
	garbled := write("garbled.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("nonsense")}))
	mixed := write("mixed.pub", append(append([]byte(nil), goodPub...), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})...))
	missing := filepath.Join(dir, "missing.pub")

	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"public key as private", second(LoadPrivateKey(good + ".pub")), good + ".pub: want one PEM block of type PRIVATE KEY (PKCS#8), found a PUBLIC KEY"},
		{"ECDSA private key", second(LoadPrivateKey(ecPriv)), ecPriv + ": a *ecdsa.PrivateKey, not an Ed25519 key"},
		{"ECDSA public key", second(LoadPublicKeys(ecPub)), ecPub + ": block 1 is a *ecdsa.PublicKey, not an Ed25519 key"},
		{"private key in the list", second(LoadPublicKeys(good+".pub", mixed)), mixed + ": block 2 is a PRIVATE KEY, want PUBLIC KEY (PKIX)"},
		{"not PEM", second(LoadPublicKeys(text)), text + ": not PEM"},
		{"too big", second(LoadPublicKeys(big)), big + ": larger than"},
		{"garbled", second(LoadPublicKeys(garbled)), garbled + ": block 1 is not a valid PKIX public key"},
		{"missing", second(LoadPublicKeys(missing)), missing + ": no such file"},
	} {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %q", tt.name, tt.err, tt.want)
		}
	}
}

func second[T any](_ T, err error) error { return err }
