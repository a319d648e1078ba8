#!/bin/sh
# The one role the forwarder's app needs: Monitoring Metrics Publisher on the data collection
# rule (azuredeploy.json assigns it too; this is the same assignment by hand, e.g. for a second
# app or a managed identity). Run with the Azure CLI, signed in as an owner of the rule.
#   RG:        the resource group of the rule
#   DCR:       the rule's name (azuredeploy.json: dcr-defender-forwarder)
#   APP_ID:    the forwarder app's client id (its service principal is looked up from it)
set -eu
: "${RG:?set RG}" "${DCR:?set DCR}" "${APP_ID:?set APP_ID}"

# Monitoring Metrics Publisher, by its id (the same in every tenant and cloud).
ROLE=3913510d-42f4-4e42-8a64-420c390055eb
SCOPE=$(az monitor data-collection rule show --resource-group "$RG" --name "$DCR" --query id --output tsv)
PRINCIPAL=$(az ad sp show --id "$APP_ID" --query id --output tsv)

az role assignment create \
  --assignee-object-id "$PRINCIPAL" \
  --assignee-principal-type ServicePrincipal \
  --role "$ROLE" \
  --scope "$SCOPE"

# What the sink's `rule_id` takes:
az monitor data-collection rule show --resource-group "$RG" --name "$DCR" --query immutableId --output tsv
# A new assignment can take a few minutes to apply: until then the API answers 403.
