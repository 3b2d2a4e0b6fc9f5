package controller

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RolloutRequest starts a rollout (POST /api/rollouts).
type RolloutRequest struct {
	// Nodes to offer the release to; All offers it to every node the
	// controller knows instead.
	Nodes []string `json:"nodes,omitempty"`
	All   bool     `json:"all,omitempty"`
	// Manifest is the signed manifest, passed on as it is: the controller
	// does not verify it, every node does.
	Manifest []byte `json:"manifest"`
	// Artifact is the SHA-256 (hex) of an artifact uploaded with POST
	// /api/artifacts; the offers then name the controller's URL of it.
	Artifact string `json:"artifact,omitempty"`
}

// ArtifactInfo answers an upload (POST /api/artifacts).
type ArtifactInfo struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	URL    string `json:"url"` // where nodes fetch it
}

// RolloutOptions configure the rollout API.
type RolloutOptions struct {
	Fleet     *Fleet
	Ingest    *Ingest
	Artifacts *Artifacts
	// PublicURL is the controller's HTTP base URL as the nodes reach it
	// (http://controller.example:8080): artifact URLs in offers start with it.
	PublicURL string
	// MaxArtifact bounds an upload; zero means 1 GiB.
	MaxArtifact int64
}

// maxManifest bounds a manifest: the offer that carries it must stay well
// below telemetry.MaxMessage.
const maxManifest = 64 << 10

// RolloutAPI serves rollouts and their artifacts:
//
//	POST /api/artifacts                    the artifact as the body; answers ArtifactInfo
//	GET  /artifacts/{sha256}               the artifact, for nodes (Range supported)
//	POST /api/rollouts                     a RolloutRequest: offers the release; answers the Rollout
//	GET  /api/rollouts                     every rollout remembered, without nodes
//	GET  /api/rollouts/{id}?after=GEN&wait=30s   the rollout, once its Gen is above GEN (or wait passed)
//
// An unknown node in a request is refused (404) before anything is offered.
func RolloutAPI(o RolloutOptions) http.Handler {
	if o.MaxArtifact <= 0 {
		o.MaxArtifact = 1 << 30
	}
	base := strings.TrimSuffix(o.PublicURL, "/")
	mux := http.NewServeMux()
	mux.Handle("GET /artifacts/{sha256}", o.Artifacts)
	mux.HandleFunc("POST /api/artifacts", func(w http.ResponseWriter, r *http.Request) {
		sum, size, err := o.Artifacts.Put(r.Body, o.MaxArtifact)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, ArtifactInfo{SHA256: sum, Size: size, URL: base + "/artifacts/" + sum})
	})
	mux.HandleFunc("POST /api/rollouts", func(w http.ResponseWriter, r *http.Request) {
		var req RolloutRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4*maxManifest)).Decode(&req); err != nil ||
			len(req.Manifest) == 0 || (len(req.Nodes) == 0) == !req.All {
			http.Error(w, "want JSON with manifest and nodes or all (and artifact)", http.StatusBadRequest)
			return
		}
		if len(req.Manifest) > maxManifest {
			http.Error(w, "manifest larger than 64 KiB", http.StatusBadRequest)
			return
		}
		var urls []string
		if req.Artifact != "" {
			if !o.Artifacts.Has(req.Artifact) {
				http.Error(w, "no artifact "+req.Artifact+": upload it first (POST /api/artifacts)", http.StatusBadRequest)
				return
			}
			urls = []string{base + "/artifacts/" + req.Artifact}
		}
		now := time.Now()
		ro, err := o.Fleet.newRollout(req.Nodes, req.Artifact, urls, now)
		switch {
		case errors.Is(err, ErrUnknownNodes):
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		took, failed := o.Ingest.offer(ro, req.Manifest, now)
		o.Fleet.offered(ro.ID, took, failed)
		ro, _, _ = o.Fleet.Rollout(ro.ID)
		writeJSON(w, ro)
	})
	mux.HandleFunc("GET /api/rollouts", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, o.Fleet.Rollouts())
	})
	mux.HandleFunc("GET /api/rollouts/{id}", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		after, err := strconv.ParseUint(q.Get("after"), 10, 64)
		if err != nil && q.Has("after") {
			http.Error(w, "after: want a generation number", http.StatusBadRequest)
			return
		}
		wait, err := time.ParseDuration(q.Get("wait"))
		if err != nil && q.Has("wait") {
			http.Error(w, "wait: want a duration such as 30s", http.StatusBadRequest)
			return
		}
		ro, changed, ok := o.Fleet.Rollout(r.PathValue("id"))
		if !ok {
			http.Error(w, "no rollout "+r.PathValue("id"), http.StatusNotFound)
			return
		}
		if ro.Gen <= after && wait > 0 {
			select {
			case <-changed:
				ro, _, _ = o.Fleet.Rollout(ro.ID)
			case <-time.After(min(wait, time.Minute)):
			case <-r.Context().Done():
				return
			}
		}
		writeJSON(w, ro)
	})
	return mux
}
