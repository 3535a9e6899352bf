"""The pieces of deploy/helm/generate.py: manifests (what `kubectl kustomize` builds) to a Helm chart."""
