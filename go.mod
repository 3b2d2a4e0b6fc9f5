module github.com/seed69aca190/edgeagent

go 1.26.0

toolchain go1.27.4

require go.yaml.in/yaml/v3 v3.0.6
