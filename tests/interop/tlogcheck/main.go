// Command tlogcheck is the Go side of fieldprint's interoperability test (tests/interop). It uses
// only golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog, an implementation of signed
// notes and RFC 6962 proofs independent of fieldprint's C++ code.
//
//	tlogcheck verify IN.json OUT.json   checks notes, checkpoints, proofs and tlog-proof bundles
//	                                    that fieldprint wrote, and reports each case's outcome
//	tlogcheck generate OUT.json         makes a key, a log, signed checkpoints, proofs and bundles
//	                                    for fieldprint to check
//
// Exchange files are JSON; byte strings are base64, notes are JSON strings.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// VerifyInput is what fieldprint writes for the verify command.
type VerifyInput struct {
	VerifierKeys []string     `json:"verifier_keys"`
	Origin       string       `json:"origin"`
	Cases        []VerifyCase `json:"cases"`
}

// VerifyCase is one check. Kind is "note", "inclusion", "consistency" or "bundle".
type VerifyCase struct {
	Name    string   `json:"name"`
	Kind    string   `json:"kind"`
	Note    string   `json:"note"`     // signed note or checkpoint (the newer one for consistency)
	OldNote string   `json:"old_note"` // consistency: the older checkpoint
	Index   int64    `json:"index"`    // inclusion: record index
	Record  string   `json:"record"`   // inclusion, bundle: base64 record data
	Proof   []string `json:"proof"`    // inclusion, consistency: base64 hashes
	Bundle  string   `json:"bundle"`   // bundle: tlog-proof text
}

// VerifyResult reports one case.
type VerifyResult struct {
	Name    string   `json:"name"`
	OK      bool     `json:"ok"`
	Error   string   `json:"error,omitempty"`
	Signers []string `json:"signers,omitempty"` // "<name>+<key hash>" of verified signatures
	Text    string   `json:"text,omitempty"`    // note text, for accepted notes
}

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "verify" {
		exitOn(verify(os.Args[2], os.Args[3]))
	} else if len(os.Args) == 3 && os.Args[1] == "generate" {
		exitOn(generate(os.Args[2]))
	} else {
		fmt.Fprintln(os.Stderr, "usage: tlogcheck verify IN.json OUT.json | generate OUT.json")
		os.Exit(2)
	}
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck:", err)
		os.Exit(1)
	}
}

func verify(inPath, outPath string) error {
	data, err := os.ReadFile(inPath)
	if err != nil {
		return err
	}
	var in VerifyInput
	if err := json.Unmarshal(data, &in); err != nil {
		return err
	}
	var list []note.Verifier
	for _, key := range in.VerifierKeys {
		v, err := note.NewVerifier(key)
		if err != nil {
			return fmt.Errorf("verifier key %q: %v", key, err)
		}
		list = append(list, v)
	}
	verifiers := note.VerifierList(list...)
	var results []VerifyResult
	for _, c := range in.Cases {
		r := VerifyResult{Name: c.Name}
		n, err := runCase(c, verifiers, in.Origin)
		if err != nil {
			r.Error = err.Error()
		} else {
			r.OK = true
			r.Text = n.Text
			for _, s := range n.Sigs {
				r.Signers = append(r.Signers, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
			}
		}
		results = append(results, r)
	}
	out, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(outPath, out, 0o644)
}

// runCase checks one case and returns the opened note that vouches for it.
func runCase(c VerifyCase, verifiers note.Verifiers, origin string) (*note.Note, error) {
	switch c.Kind {
	case "note":
		return note.Open([]byte(c.Note), verifiers)
	case "inclusion":
		n, cp, err := openCheckpoint(c.Note, verifiers, origin)
		if err != nil {
			return nil, err
		}
		return n, checkInclusion(cp, c.Index, c.Record, c.Proof)
	case "consistency":
		n, cp, err := openCheckpoint(c.Note, verifiers, origin)
		if err != nil {
			return nil, err
		}
		_, old, err := openCheckpoint(c.OldNote, verifiers, origin)
		if err != nil {
			return nil, fmt.Errorf("old checkpoint: %v", err)
		}
		proof, err := decodeHashes(c.Proof)
		if err != nil {
			return nil, err
		}
		return n, tlog.CheckTree(proof, cp.size, cp.root, old.size, old.root)
	case "bundle":
		return checkBundle(c.Bundle, c.Record, verifiers, origin)
	}
	return nil, fmt.Errorf("unknown case kind %q", c.Kind)
}

func checkInclusion(cp checkpoint, index int64, record string, proofText []string) error {
	data, err := base64.StdEncoding.DecodeString(record)
	if err != nil {
		return err
	}
	proof, err := decodeHashes(proofText)
	if err != nil {
		return err
	}
	return tlog.CheckRecord(proof, cp.size, cp.root, index, tlog.RecordHash(data))
}

// checkBundle parses c2sp.org/tlog-proof text with its own reading of the spec.
func checkBundle(bundle, record string, verifiers note.Verifiers, origin string) (*note.Note, error) {
	lines := strings.SplitAfter(bundle, "\n")
	if len(lines) < 3 || lines[0] != "c2sp.org/tlog-proof@v1\n" {
		return nil, errors.New("bundle: bad header")
	}
	i := 1
	if strings.HasPrefix(lines[i], "extra ") {
		if _, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(lines[i][6:], "\n")); err != nil {
			return nil, fmt.Errorf("bundle: extra: %v", err)
		}
		i++
	}
	indexText := strings.TrimSuffix(strings.TrimPrefix(lines[i], "index "), "\n")
	index, err := strconv.ParseInt(indexText, 10, 64)
	if !strings.HasPrefix(lines[i], "index ") || err != nil || strconv.FormatInt(index, 10) != indexText {
		return nil, errors.New("bundle: bad index line")
	}
	var proof []string
	for i++; i < len(lines) && lines[i] != "\n"; i++ {
		proof = append(proof, strings.TrimSuffix(lines[i], "\n"))
	}
	if i == len(lines) {
		return nil, errors.New("bundle: no empty line before the checkpoint")
	}
	n, cp, err := openCheckpoint(strings.Join(lines[i+1:], ""), verifiers, origin)
	if err != nil {
		return nil, err
	}
	return n, checkInclusion(cp, index, record, proof)
}

// openCheckpoint opens a signed checkpoint and parses its text per c2sp.org/tlog-checkpoint.
func openCheckpoint(text string, verifiers note.Verifiers, origin string) (*note.Note, checkpoint, error) {
	n, err := note.Open([]byte(text), verifiers)
	if err != nil {
		return nil, checkpoint{}, err
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 {
		return nil, checkpoint{}, errors.New("checkpoint has fewer than three lines")
	}
	var cp checkpoint
	cp.origin = lines[0]
	if cp.origin != origin {
		return nil, checkpoint{}, fmt.Errorf("checkpoint origin %q, want %q", cp.origin, origin)
	}
	cp.size, err = strconv.ParseInt(lines[1], 10, 64)
	if err != nil || cp.size < 0 || strconv.FormatInt(cp.size, 10) != lines[1] {
		return nil, checkpoint{}, errors.New("checkpoint size is malformed")
	}
	cp.root, err = tlog.ParseHash(lines[2])
	if err != nil {
		return nil, checkpoint{}, err
	}
	return n, cp, nil
}

func decodeHashes(text []string) ([]tlog.Hash, error) {
	var out []tlog.Hash
	for _, t := range text {
		h, err := tlog.ParseHash(t)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// GenerateOutput is what the generate command writes for fieldprint to check.
type GenerateOutput struct {
	Origin          string          `json:"origin"`
	SignerKey       string          `json:"signer_key"`
	VerifierKey     string          `json:"verifier_key"`
	WitnessKey      string          `json:"witness_verifier_key"`
	Records         []string        `json:"records"`
	Checkpoints     []GoCheckpoint  `json:"checkpoints"`
	Inclusion       []GoInclusion   `json:"inclusion"`
	Consistency     []GoConsistency `json:"consistency"`
	CosignedNote    string          `json:"cosigned_note"` // largest checkpoint, log + witness
	Bundles         []GoBundle      `json:"bundles"`
	PlainText       string          `json:"plain_text"`
	PlainSignedNote string          `json:"plain_signed_note"` // PlainText signed by the log key
}

type GoCheckpoint struct {
	Size int64  `json:"size"`
	Root string `json:"root"`
	Note string `json:"note"`
}

type GoInclusion struct {
	Size  int64    `json:"size"`
	Index int64    `json:"index"`
	Proof []string `json:"proof"`
}

type GoConsistency struct {
	OldSize int64    `json:"old_size"`
	Size    int64    `json:"size"`
	Proof   []string `json:"proof"`
}

type GoBundle struct {
	Index  int64  `json:"index"`
	Bundle string `json:"bundle"`
}

const generatedRecords = 13

func generate(outPath string) error {
	out := GenerateOutput{Origin: "go.example/interop-log"}
	skey, vkey, err := note.GenerateKey(rand.Reader, out.Origin)
	if err != nil {
		return err
	}
	wskey, wvkey, err := note.GenerateKey(rand.Reader, "go.example/witness")
	if err != nil {
		return err
	}
	out.SignerKey, out.VerifierKey, out.WitnessKey = skey, vkey, wvkey
	signer, err := note.NewSigner(skey)
	if err != nil {
		return err
	}
	witness, err := note.NewSigner(wskey)
	if err != nil {
		return err
	}

	var hashes []tlog.Hash
	reader := memoryReader(&hashes)
	if err := buildTree(&out, &hashes); err != nil {
		return err
	}
	notes := map[int64]string{}
	for size := int64(1); size <= generatedRecords; size++ {
		root, err := tlog.TreeHash(size, reader)
		if err != nil {
			return err
		}
		text := fmt.Sprintf("%s\n%d\n%s\n", out.Origin, size, root)
		msg, err := note.Sign(&note.Note{Text: text}, signer)
		if err != nil {
			return err
		}
		notes[size] = string(msg)
		out.Checkpoints = append(out.Checkpoints, GoCheckpoint{size, root.String(), string(msg)})
		if size == generatedRecords {
			cosigned, err := note.Sign(&note.Note{Text: text}, signer, witness)
			if err != nil {
				return err
			}
			out.CosignedNote = string(cosigned)
		}
	}
	if err := addProofs(&out, reader, notes); err != nil {
		return err
	}
	out.PlainText = "fieldprint interop\n\nsigned by Go\n"
	plain, err := note.Sign(&note.Note{Text: out.PlainText}, signer)
	if err != nil {
		return err
	}
	out.PlainSignedNote = string(plain)
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(outPath, data, 0o644)
}

// memoryReader reads stored hashes from a slice that may still grow.
func memoryReader(hashes *[]tlog.Hash) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		list := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			if x < 0 || x >= int64(len(*hashes)) {
				return nil, fmt.Errorf("stored hash %d does not exist", x)
			}
			list[i] = (*hashes)[x]
		}
		return list, nil
	})
}

// buildTree appends generatedRecords records to an in-memory tlog (tlog.StoredHashes).
func buildTree(out *GenerateOutput, hashes *[]tlog.Hash) error {
	reader := memoryReader(hashes)
	for i := int64(0); i < generatedRecords; i++ {
		record := []byte(fmt.Sprintf("go record %d", i))
		out.Records = append(out.Records, base64.StdEncoding.EncodeToString(record))
		stored, err := tlog.StoredHashes(i, record, reader)
		if err != nil {
			return err
		}
		*hashes = append(*hashes, stored...)
	}
	return nil
}

// addProofs adds every inclusion proof and every consistency proof of the log, and a tlog-proof
// bundle for each record in the largest tree.
func addProofs(out *GenerateOutput, reader tlog.HashReader, notes map[int64]string) error {
	for size := int64(1); size <= generatedRecords; size++ {
		for index := int64(0); index < size; index++ {
			proof, err := tlog.ProveRecord(size, index, reader)
			if err != nil {
				return err
			}
			out.Inclusion = append(out.Inclusion, GoInclusion{size, index, encodeHashes(proof)})
		}
		for old := int64(1); old <= size; old++ {
			proof, err := tlog.ProveTree(size, old, reader)
			if err != nil {
				return err
			}
			out.Consistency = append(out.Consistency, GoConsistency{old, size, encodeHashes(proof)})
		}
	}
	for index := int64(0); index < generatedRecords; index++ {
		proof, err := tlog.ProveRecord(generatedRecords, index, reader)
		if err != nil {
			return err
		}
		var b bytes.Buffer
		b.WriteString("c2sp.org/tlog-proof@v1\n")
		if index%2 == 1 {
			fmt.Fprintf(&b, "extra %s\n", base64.StdEncoding.EncodeToString([]byte("go extra")))
		}
		fmt.Fprintf(&b, "index %d\n", index)
		for _, h := range proof {
			fmt.Fprintf(&b, "%s\n", h)
		}
		b.WriteString("\n")
		b.WriteString(notes[generatedRecords])
		out.Bundles = append(out.Bundles, GoBundle{index, b.String()})
	}
	return nil
}

func encodeHashes(hashes []tlog.Hash) []string {
	out := make([]string, len(hashes))
	for i, h := range hashes {
		out[i] = h.String()
	}
	return out
}
