package release

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
)

// A key file is about 120 bytes of PEM per key; anything much larger is not one.
const maxKeyFile = 64 << 10

// GenerateKey makes a new signing key and writes it to path (PKCS#8 PEM,
// mode 0600) and its public key to path.pub (PKIX PEM). It never overwrites
// a file: losing a release key is worse than a failed command.
func GenerateKey(path string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	// The public file first: if it cannot be written, no private key is left
	// without its public half.
	if err := writeNew(path+".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	if err := writeNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		os.Remove(path + ".pub")
		return nil, err
	}
	return pub, nil
}

func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write key %s: %w", path, err)
	}
	return nil
}

// LoadPrivateKey reads an Ed25519 private key from a PEM file holding one
// PKCS#8 "PRIVATE KEY" block (as GenerateKey or `openssl genpkey -algorithm
// ed25519` write it).
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	blocks, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	if len(blocks) != 1 || blocks[0].Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("private key %s: want one PEM block of type PRIVATE KEY (PKCS#8), found %s", path, describe(blocks))
	}
	key, err := x509.ParsePKCS8PrivateKey(blocks[0].Bytes)
	if err != nil {
		return nil, fmt.Errorf("private key %s: not a valid PKCS#8 private key", path)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key %s: a %T, not an Ed25519 key", path, key)
	}
	return priv, nil
}

// LoadPublicKeys reads Ed25519 public keys from PEM files, each holding one
// or more PKIX "PUBLIC KEY" blocks (one file can carry a whole trusted list).
// A file without a key, or with anything else in a PEM block, is an error
// naming the file.
func LoadPublicKeys(paths ...string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for _, path := range paths {
		blocks, err := readPEM(path)
		if err != nil {
			return nil, err
		}
		for i, b := range blocks {
			if b.Type != "PUBLIC KEY" {
				return nil, fmt.Errorf("public key %s: block %d is a %s, want PUBLIC KEY (PKIX)", path, i+1, b.Type)
			}
			key, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				// asn1's errors tell a person nothing: say what the block is not.
				return nil, fmt.Errorf("public key %s: block %d is not a valid PKIX public key", path, i+1)
			}
			pub, ok := key.(ed25519.PublicKey)
			if !ok {
				return nil, fmt.Errorf("public key %s: block %d is a %T, not an Ed25519 key", path, i+1, key)
			}
			keys = append(keys, pub)
		}
	}
	return keys, nil
}

// readPEM returns the PEM blocks of a file, at least one.
func readPEM(path string) ([]*pem.Block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	defer f.Close()
	rest, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	if len(rest) > maxKeyFile {
		return nil, fmt.Errorf("key %s: larger than %d bytes, not a key file", path, maxKeyFile)
	}
	var blocks []*pem.Block
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks = append(blocks, b)
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("key %s: not PEM (no -----BEGIN line)", path)
	}
	return blocks, nil
}

func describe(blocks []*pem.Block) string {
	if len(blocks) != 1 {
		return fmt.Sprintf("%d blocks", len(blocks))
	}
	return "a " + blocks[0].Type
}
